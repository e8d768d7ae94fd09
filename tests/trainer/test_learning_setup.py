"""What RL starts from: its own learning-rate schedule (whatever the warm start did), a warm-started
frozen teacher, and a prompt order that follows the seed."""

import json
import math

import pytest
from safetensors.torch import load_file

from megatron_codistill.config import ConfigError, load_config, validate
from megatron_codistill.trainer.prompts import PromptStream
from megatron_codistill.trainer.tokenizers import load_run_tokenizer
from megatron_codistill.trainer.train import train_main
from megatron_codistill.trainer.warm_start import cosine_lr
from tests.trainer.conftest import TINY

STEPS, WARMUP, LR, MIN_LR = 6, 2, 1e-3, 1e-4


def schedule(style: str, k: int) -> float:
    """Closed form of the lr of RL optimizer step k (1-based): linear warmup over WARMUP steps to LR,
    then constant, or linear / cosine decay to MIN_LR at step STEPS (Megatron's convention: step k
    runs at the value for k - 1 completed steps)."""
    n = k - 1
    if n <= WARMUP:
        return LR * n / WARMUP
    if style == "constant":
        return LR
    ratio = (n - WARMUP) / (STEPS - WARMUP)
    coeff = 1 - ratio if style == "linear" else 0.5 * (1 + math.cos(math.pi * ratio))
    return MIN_LR + coeff * (LR - MIN_LR)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warm_steps", [0, 5])
def test_rl_step_k_runs_at_the_schedules_value_k(style, warm_steps, tiny_overrides, tmp_path):
    opt = [f"{m}.optimizer.{k}={v}" for m in ("small", "large")
           for k, v in (("lr", LR), ("min_lr", MIN_LR), ("warmup_steps", WARMUP), ("decay_style", style))]
    train_main(str(TINY), [*tiny_overrides, f"run.steps={STEPS}", "run.eval_every=0", *opt,
                           f"warm_start.small_steps={warm_steps}", f"warm_start.large_steps={warm_steps}"])
    got = {r["step"]: r for r in rows(tmp_path / "run")}
    for k in range(1, STEPS + 1):
        for model in ("small", "large"):
            assert got[k][f"{model}/lr"] == pytest.approx(schedule(style, k), rel=1e-9, abs=1e-15), (model, k)


def test_frozen_teacher_is_warm_started_like_the_codistill_large_model(tiny_overrides, tmp_path):
    runs = {}
    for mode in ("codistill", "kd_grpo"):
        run_dir = tmp_path / mode
        overrides = [o for o in tiny_overrides if not o.startswith("run.dir")]
        train_main(str(TINY), [*overrides, f"run.dir={run_dir}", f"algorithm.mode={mode}",
                               "checkpoint.export_hf=true", "checkpoint.every=1"])
        runs[mode] = run_dir

    def large(run_dir, step):
        return load_file(run_dir / "exports" / f"step_{step:06d}" / "large" / "model.safetensors")

    warm_codistill, warm_teacher = large(runs["codistill"], 0), large(runs["kd_grpo"], 0)
    assert warm_codistill.keys() == warm_teacher.keys()
    for name in warm_codistill:  # the same seed and warm start: the same teacher, bit for bit
        assert warm_codistill[name].equal(warm_teacher[name]), name
    after = large(runs["kd_grpo"], 2)
    assert all(after[n].equal(warm_teacher[n]) for n in after), "the kd_grpo teacher must stay frozen in RL"
    zero = {r["step"]: r for r in rows(runs["kd_grpo"])}[0]
    assert zero["eval/arith/large_accuracy"] == {r["step"]: r for r in rows(runs["codistill"])}[0][
        "eval/arith/large_accuracy"]


def test_frozen_teacher_without_weights_is_refused(tiny_overrides):
    with pytest.raises(ConfigError, match="warm_start.large_steps"):
        train_main(str(TINY), [*tiny_overrides, "algorithm.mode=opd", "warm_start.large_steps=0"])


def test_the_seed_sets_the_prompt_order(tiny_overrides):
    def first_prompts(*extra):
        cfg = load_config(TINY, [*tiny_overrides, *extra])
        stream = PromptStream(cfg, load_run_tokenizer(cfg, ["small"]), rank=0, world_size=1)
        return [p.prompt for p in stream.next_batch()]

    assert first_prompts("run.seed=1") != first_prompts("run.seed=2")
    assert first_prompts("run.seed=1", "data.shuffle_seed=7") == first_prompts("run.seed=2", "data.shuffle_seed=7")


def test_train_limit_keeps_the_first_rows(tiny_overrides):
    def problems(limit):
        cfg = load_config(TINY, [*tiny_overrides, f"data.train_limit={limit}"])
        return [p.prompt for p in PromptStream(cfg, load_run_tokenizer(cfg, ["small"]), rank=0, world_size=1).problems]

    every = problems("null")
    assert len(every) == 20000 and problems(5) == every[:5]
    with pytest.raises(ValueError, match="data.train_limit"):
        validate(load_config(TINY, [*tiny_overrides, "data.train_limit=0"]), 1)


def test_warm_start_lr_is_a_cosine_down_to_its_floor():
    assert [cosine_lr(1.0, i, 4) for i in range(5)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)
    # floor 0.2: 0.2 + 0.8 * the same cosine; ratio 1 is a constant rate
    assert [cosine_lr(1.0, i, 4, 0.2) for i in range(5)] == pytest.approx([1.0, 0.882843, 0.6, 0.317157, 0.2],
                                                                          abs=1e-6)
    assert {cosine_lr(3e-3, i, 7, 1.0) for i in range(7)} == {3e-3}


def test_warm_start_floor_changes_the_warm_started_weights(tiny_overrides, tmp_path):
    def warm(ratio):
        run_dir = tmp_path / f"r{ratio}"
        overrides = [o for o in tiny_overrides if not o.startswith("run.dir")]
        train_main(str(TINY), [*overrides, f"run.dir={run_dir}", "run.steps=0", "checkpoint.export_hf=true",
                               "warm_start.small_steps=3", "warm_start.large_steps=0", "algorithm.mode=grpo",
                               f"warm_start.min_lr_ratio={ratio}"])
        return load_file(run_dir / "exports" / "step_000000" / "small" / "model.safetensors")

    annealed, constant = warm(0.0), warm(1.0)
    assert any(not annealed[n].equal(constant[n]) for n in annealed)


def test_warm_start_floor_out_of_range_is_refused(tiny_overrides):
    cfg = load_config(TINY, [*tiny_overrides, "warm_start.min_lr_ratio=1.5"])
    with pytest.raises(ConfigError, match="warm_start.min_lr_ratio"):
        validate(cfg, 1)
