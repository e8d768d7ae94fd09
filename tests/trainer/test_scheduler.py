"""The step scheduler: `overlap` computes exactly what `sequential` does (metrics, weights, checkpoints) with
any engine - in-process, a slow server with random delays and stragglers, a rollout worker process - on 1
and 2 ranks and across a resume; `async` keeps its staleness bound, also after a resume, and equals
`sequential` when k = 0."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_codistill.trainer import engines
from megatron_codistill.trainer.train import train_main
from tests.distributed import run_distributed
from tests.trainer.conftest import FAST, TINY
from tests.trainer.delayed_engine import DelayedEngine
from tests.trainer.test_reshard import stored_state
from tests.trainer.test_resume import ENV, TIMING

STEPS = 4
BASE = [o for o in FAST if not o.startswith("run.steps")] + [f"run.steps={STEPS}", "checkpoint.every=2",
                                                             "checkpoint.keep_last=0", "checkpoint.export_hf=true",
                                                             "run.eval_sampled=true"]


def rows(run_dir) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir, step=STEPS) -> dict[str, dict[str, torch.Tensor]]:
    out = run_dir / "exports" / f"step_{step:06d}"
    return {m: load_file(out / m / "model.safetensors") for m in ("small", "large")}


def checkpoint_state(run_dir, step) -> tuple[dict, dict]:
    """(every tensor, the plain values) of a checkpoint's distributed checkpoint: both models' weights,
    Adam moments, main copies and schedules, whatever layout saved them."""
    from megatron_codistill.convert.mcore_ckpt import process_group

    with process_group():
        return stored_state(run_dir / "checkpoints" / f"step_{step:06d}" / "dist")


def assert_same_run(a, b):
    assert rows(a) == rows(b)
    wa, wb = weights(a), weights(b)
    for m in wa:
        assert all(torch.equal(wa[m][k], wb[m][k]) for k in wa[m]), m
    for step in (2, STEPS):
        (ta, ca), (tb, cb) = checkpoint_state(a, step), checkpoint_state(b, step)
        assert ca == cb and ta.keys() == tb.keys(), step
        assert all(torch.equal(ta[k], tb[k]) for k in ta), step


def delayed(monkeypatch, rank=0, straggle=1.0):
    make = engines.embedded_engine

    def wrapped(*args, **kwargs):
        return DelayedEngine(make(*args, **kwargs), seed=17 + rank, straggle=straggle)

    monkeypatch.setattr(engines, "embedded_engine", wrapped)


@pytest.mark.parametrize("engine", ["in_process", "delayed"])
def test_overlap_equals_sequential_on_one_rank(engine, monkeypatch, tmp_path):
    if engine == "delayed":
        delayed(monkeypatch)
    for mode in ("sequential", "overlap"):
        train_main(str(TINY), [*BASE, f"run.dir={tmp_path / mode}", f"scheduler.mode={mode}"])
    assert_same_run(tmp_path / "sequential", tmp_path / "overlap")
    assert [r.get("rollout/staleness_max") for r in rows(tmp_path / "overlap")[1:]] == [0.0] * STEPS


def test_async_with_k0_equals_sequential(tmp_path):
    train_main(str(TINY), [*BASE, f"run.dir={tmp_path / 'seq'}", "scheduler.mode=sequential"])
    train_main(str(TINY), [*BASE, f"run.dir={tmp_path / 'async'}", "scheduler.mode=async",
                           "scheduler.max_staleness=0"])
    assert_same_run(tmp_path / "seq", tmp_path / "async")


def _two_ranks(run_dir: str, mode: str):
    import os

    import pytest as _pytest

    rank = int(os.environ["RANK"])
    with _pytest.MonkeyPatch.context() as mp:
        make = engines.embedded_engine
        # rank 1 is a straggler: its engine answers five times slower
        mp.setattr(engines, "embedded_engine",
                   lambda *a, **k: DelayedEngine(make(*a, **k), seed=17 + rank, straggle=5.0 if rank else 1.0))
        train_main(str(TINY), [*BASE, f"run.dir={run_dir}", f"scheduler.mode={mode}", "large.tensor_parallel=2"])


@pytest.mark.slow
def test_overlap_equals_sequential_on_two_ranks_with_a_straggler(tmp_path):
    for mode in ("sequential", "overlap"):
        run_distributed(_two_ranks, 2, str(tmp_path / mode), mode)
    assert_same_run(tmp_path / "sequential", tmp_path / "overlap")


def cli_train(run_dir, *extra, fault=None):
    env = dict(ENV, CODISTILL_FAULT=fault) if fault else ENV
    cmd = [sys.executable, "-m", "megatron_codistill.cli", "train", str(TINY), *BASE, f"run.dir={run_dir}",
           "rollout.worker_process=true", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_overlap_with_a_worker_process_resumes_exactly_after_sigterm_during_a_generation(tmp_path):
    cli_train(tmp_path / "sequential", "scheduler.mode=sequential")
    # the 4th launch is step 4's generation, started during step 3 while the large model updates
    stopped = cli_train(tmp_path / "overlap", "scheduler.mode=overlap", "checkpoint.every=0",
                        fault="scheduler.launched@4:sigterm")
    assert "preempted at step 3" in stopped.stderr
    cli_train(tmp_path / "overlap", "scheduler.mode=overlap", "checkpoint.every=0", "--resume")
    assert rows(tmp_path / "overlap") == rows(tmp_path / "sequential")
    wa, wb = weights(tmp_path / "overlap"), weights(tmp_path / "sequential")
    assert all(torch.equal(wa[m][k], wb[m][k]) for m in wa for k in wa[m])


@pytest.mark.slow
def test_async_keeps_its_staleness_bound_across_a_resume(tmp_path):
    k = 2
    cli_train(tmp_path / "full", "scheduler.mode=async", f"scheduler.max_staleness={k}")
    full = rows(tmp_path / "full")[1:]
    # step t trains on rollouts of the weights after step t - 1 - min(t - 1, k): the queue runs k ahead
    assert [r["rollout/staleness_max"] for r in full] == [min(t - 1, k) for t in range(1, STEPS + 1)]
    assert all(r["rollout/staleness_mean"] == r["rollout/staleness_max"] for r in full)
    assert all(r[f"rollout/staleness_{min(t - 1, k)}"] == 1.0 for t, r in zip(range(1, STEPS + 1), full))
    assert all("small/async/weight_mean" in r for r in full[1:])
    assert all(r["small/async/weight_mean"] <= 2.0 for r in full[1:])
    stopped = cli_train(tmp_path / "resumed", "scheduler.mode=async", f"scheduler.max_staleness={k}",
                        "checkpoint.every=0", fault="scheduler.launched@4:sigterm")
    assert "preempted at step 2" in stopped.stderr  # launches 1-3 before step 1, the 4th before step 2
    cli_train(tmp_path / "resumed", "scheduler.mode=async", f"scheduler.max_staleness={k}", "checkpoint.every=0",
              "--resume")
    assert rows(tmp_path / "resumed")[1:] == full


@pytest.mark.parametrize("mode", [["algorithm.mode=codistill"], ["algorithm.mode=grpo", "algorithm.grpo_model=large"],
                                  ["algorithm.mode=grpo", "algorithm.grpo_model=small"]])
def test_every_step_samples_with_the_generators_current_weights(mode, tiny_overrides):
    """With updates from step 1 (no warmup), a rollout sampled by stale weights would differ from the
    trainer's log-probs by far more than numerics: the engine must hold the weights after the
    generator's last update whenever a generation starts (overlap pushes only after that update)."""
    lr = [f"{m}.optimizer.{k}={v}" for m in ("small", "large") for k, v in (("lr", 3e-3), ("warmup_steps", 0))]
    varied = ["reward.kind=plugin", "reward.plugin=tests.trainer.test_distributed_step:parity_reward"]
    train_main(str(TINY), [*tiny_overrides, "run.steps=3", "scheduler.mode=overlap", *lr, *mode, *varied])
    steps = rows(Path(tiny_overrides[0].removeprefix("run.dir=")))[1:]
    assert all(r["rollout/logprob_diff_max"] < 1e-4 and r["rollout/staleness_max"] == 0 for r in steps)
    assert all(r.get("small/grad_norm", 0) + r.get("large/grad_norm", 0) > 0 for r in steps)
