"""Every config switch of reference-conditioned KD, process supervision and learned reward models changes
what a tiny run computes: each case runs a step or two with the switch flipped and sees its metric move (the
retraining knobs of reward.retrain are flipped in tests/trainer/test_objectives_retrain.py). A conditioned
teacher must not change the large model's own update; a resumed iterative-RL run continues bitwise."""

import json
import shutil
from pathlib import Path

import pytest

from megatron_codistill.trainer.train import train_main
from tests.trainer.conftest import FAST, TINY

MODELS = TINY.parent / "reward_models"
EVEN = ["reward.kind=plugin", "reward.plugin=tests.trainer.test_objectives_conditioning:even_length"]
GOLD = ["algorithm.kd_reference=gold", "algorithm.kd_context='{reference};{prompt}'"]
TEACHER = ["algorithm.kd_reference=teacher", "algorithm.kd_context='{reference};{prompt}'",
           "algorithm.kd_teacher_samples=3"]
OUTCOME_MODEL = ["reward.kind=model", f"reward.model={MODELS / 'outcome'}", "reward.verifier=arith"]
PROCESS = ["reward.kind=arith", "algorithm.supervision=process", "algorithm.step_delimiters=[',', ';']"]
_cache: dict[tuple, list[dict]] = {}


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> list[str]:
    """Four one-digit sums, memorised by 30 warm-start steps: rollouts with right and wrong steps."""
    from megatron_codistill.data.arith import write_dataset

    path = write_dataset(tmp_path_factory.mktemp("data") / "easy.jsonl", 4, 1, seed=0)
    return [f"data.train={path}", "warm_start.small_steps=30", "warm_start.large_steps=30"]


def run(tmp_path_factory, *overrides, steps: int = 1) -> list[dict]:
    """Metrics rows (steps 1..steps) of a codistill run with `overrides` on 64 training problems (cached per
    override list)."""
    key = (*overrides, steps)
    if key not in _cache:
        from megatron_codistill.data.arith import write_dataset

        small = tmp_path_factory.getbasetemp() / "train64.jsonl"
        if not small.exists():
            write_dataset(small, 64, 3, seed=1)
        run_dir = tmp_path_factory.mktemp("run")
        assert train_main(str(TINY), [f"run.dir={run_dir}", *FAST, "run.eval_every=0", f"run.steps={steps}",
                                      f"data.train={small}", *overrides]) == 0
        _cache[key] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return _cache[key]


def moved(a: list[dict], b: list[dict], key: str, step: int = 2) -> bool:
    return a[step - 1].get(key) != b[step - 1].get(key)


def test_gold_reference_changes_the_small_kd_reward_not_the_large_update(tmp_path_factory):
    plain, gold = run(tmp_path_factory, *EVEN), run(tmp_path_factory, *EVEN, *GOLD)
    assert moved(plain, gold, "small/kd/reward_mean", step=1)
    assert gold[0]["kd/reference_frac"] == 1.0 and gold[0]["kd/conditioned_minus_plain"] != 0.0
    # same rollouts at step 1 (same weights and RNG): the large model's update saw its plain log-probs
    assert gold[0]["large/loss"] == plain[0]["large/loss"] and gold[0]["large/is/ess"] == plain[0]["large/is/ess"]
    assert gold[0]["kd/approx_kl_small_large"] == plain[0]["kd/approx_kl_small_large"]


@pytest.mark.parametrize("mode", ["kd_grpo", "opd"])
def test_gold_reference_in_frozen_teacher_modes(tmp_path_factory, mode):
    plain = run(tmp_path_factory, *EVEN, f"algorithm.mode={mode}")
    gold = run(tmp_path_factory, *EVEN, *GOLD, f"algorithm.mode={mode}")
    assert moved(plain, gold, "small/kd/reward_mean", step=1) and "kd/conditioned_minus_plain" in gold[0]


def test_teacher_reference_context_and_samples(tmp_path_factory):
    gold, teacher = run(tmp_path_factory, *EVEN, *GOLD), run(tmp_path_factory, *EVEN, *TEACHER)
    assert moved(gold, teacher, "small/kd/reward_mean", step=1) and 0 < teacher[0]["kd/reference_frac"] <= 1
    other = run(tmp_path_factory, *EVEN, *GOLD[:1], "algorithm.kd_context='{reference}={prompt}'")
    assert moved(gold, other, "kd/conditioned_minus_plain", step=1)
    fewer = run(tmp_path_factory, *EVEN, *TEACHER, "algorithm.kd_teacher_samples=1")
    assert moved(teacher, fewer, "kd/reference_frac", step=1)


def test_process_supervision_and_its_delimiters(tmp_path_factory, easy):
    outcome, process = run(tmp_path_factory, *easy, "reward.kind=arith"), run(tmp_path_factory, *easy, *PROCESS)
    assert 0 < process[0]["ps/step_reward_mean"] < 1  # the group has right and wrong steps
    for key in ("small/adv/abs_mean", "large/adv/abs_mean"):
        assert moved(outcome, process, key, step=1), key
    assert process[0]["ps/steps_mean"] > 1 and "ps/steps_mean" not in outcome[0]
    commas = run(tmp_path_factory, *easy, *PROCESS[:2], "algorithm.step_delimiters=[',']")  # one-digit: 1 step
    assert moved(process, commas, "ps/steps_mean", step=1) and commas[0]["ps/steps_mean"] == 1.0
    large = run(tmp_path_factory, *easy, *PROCESS, "algorithm.mode=grpo", "algorithm.grpo_model=large")
    assert large[0]["large/ps/adv_abs_mean"] > 0


def test_process_reward_model(tmp_path_factory, easy):
    exact = run(tmp_path_factory, *easy, *PROCESS)
    learned = run(tmp_path_factory, *easy, *PROCESS, f"reward.process_model={MODELS / 'process'}")
    assert moved(exact, learned, "ps/step_reward_mean", step=1)
    assert learned[0]["ps/steps_mean"] == exact[0]["ps/steps_mean"]  # same rollouts, same steps, other rewards


def test_outcome_reward_model_path_and_verifier(tmp_path_factory):
    arith, model = run(tmp_path_factory, "reward.kind=arith"), run(tmp_path_factory, *OUTCOME_MODEL)
    assert moved(arith, model, "small/reward/task_mean", step=1)
    assert 0 < model[0]["small/reward/task_mean"] < 1  # sigmoid of the model's scores
    assert model[0]["small/task_reward"] == arith[0]["small/task_reward"]  # the generator's metric: the verifier
    other_dir = tmp_path_factory.mktemp("rm")
    config = json.loads((MODELS / "outcome" / "config.json").read_text())
    (other_dir / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "intermediate_size": 64}))
    other = run(tmp_path_factory, *OUTCOME_MODEL[:1], f"reward.model={other_dir}", *OUTCOME_MODEL[2:])
    assert moved(model, other, "small/reward/task_mean", step=1)
    plugin = run(tmp_path_factory, *OUTCOME_MODEL[:2], "reward.verifier=plugin", *EVEN[1:])
    assert moved(model, plugin, "small/task_reward", step=1)


def test_retraining_changes_the_reward_of_the_next_step(tmp_path_factory):
    static = run(tmp_path_factory, *OUTCOME_MODEL, steps=2)
    retrained = run(tmp_path_factory, *OUTCOME_MODEL, "reward.retrain.every=1", steps=2)
    assert static[0]["small/reward/task_mean"] == retrained[0]["small/reward/task_mean"]
    assert moved(static, retrained, "small/reward/task_mean", step=2)
    assert retrained[0]["retrain/examples"] == 16.0 and "retrain/examples" not in static[0]
    every2 = run(tmp_path_factory, *OUTCOME_MODEL, "reward.retrain.every=2", steps=2)
    assert "retrain/examples" not in every2[0] and every2[1]["retrain/examples"] == 32.0


def test_a_round_resets_the_kl_reference_of_trained_models_when_asked():
    from types import SimpleNamespace

    from megatron_codistill.trainer.retrain import after_step

    resets = []
    policy = lambda name, ref: SimpleNamespace(reference=ref, reset_reference=lambda: resets.append(name))  # noqa: E731
    for flag in (False, True):
        resets.clear()
        run_ = SimpleNamespace(retrainer=SimpleNamespace(due=lambda step: step % 2 == 0, round=lambda: {"r": 1.0}),
                               cfg=SimpleNamespace(reward=SimpleNamespace(retrain=SimpleNamespace(reset_reference=flag))),
                               policies={"small": policy("small", object()), "large": policy("large", None)})
        assert after_step(run_, 1) == {} and resets == []
        assert after_step(run_, 2) == {"r": 1.0}
        assert resets == (["small"] if flag else [])


def test_reset_reference_changes_the_kl_of_the_next_step(tmp_path_factory):
    kl = ["algorithm.kl_beta=0.1", "reward.retrain.every=1", "small.optimizer.warmup_steps=0"]  # step 1 moves it
    keep = run(tmp_path_factory, *OUTCOME_MODEL, *kl, steps=2)
    reset = run(tmp_path_factory, *OUTCOME_MODEL, *kl, "reward.retrain.reset_reference=true", steps=2)
    assert keep[0]["small/loss/kl"] == reset[0]["small/loss/kl"] == 0.0  # the reference starts as the policy
    # step 2: the kept reference is the initial policy, the reset one the policy after step 1
    assert keep[1]["small/loss/kl"] > 0.0 and reset[1]["small/loss/kl"] == 0.0


TIMING = ("time/", "timeline/", "perf/", "rollout/sync_seconds", "rollout/sync_mb_per_s")  # wall-clock measurements


def _rows(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = {k: v for k, v in row.items() if not k.startswith(TIMING)}
    return out


def test_resume_of_iterative_rl_with_a_teacher_reference_is_bitwise(tmp_path):
    import torch

    args = [*FAST, "run.eval_every=0", "run.steps=4", "data.train=./data/test.jsonl", "checkpoint.every=2",
            *OUTCOME_MODEL[:2], "reward.verifier=plugin", *EVEN[1:], *TEACHER, "reward.retrain.every=1"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train_main(str(TINY), [f"run.dir={full}", *args]) == 0
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000004")
    assert train_main(str(TINY), [f"run.dir={cut}", *args], resume=True) == 0
    a, b = _rows(full), _rows(cut)
    assert a[1]["retrain/examples"] > 0 and a[3]["kd/reference_frac"] > 0
    for step in (3, 4):
        assert a[step] == b[step], f"step {step} differs after resume"
    sa = torch.load(full / "checkpoints" / "step_000004" / "rank_00000.pt", weights_only=False)["objectives"]
    sb = torch.load(cut / "checkpoints" / "step_000004" / "rank_00000.pt", weights_only=False)["objectives"]
    for k, v in sa["retrainer"]["model"].items():
        assert torch.equal(v, sb["retrainer"]["model"][k]), k
    assert sa["retrainer"]["old"] == sb["retrainer"]["old"]
    assert torch.equal(sa["conditioner"]["teacher_engine_rng"]["generator"],
                       sb["conditioner"]["teacher_engine_rng"]["generator"])
