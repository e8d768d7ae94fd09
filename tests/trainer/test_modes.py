"""Every mode runs two steps on the tiny config, writes its metrics, and logs what the mode implies."""

import json

import pytest

from megatron_codistill.trainer.train import train_main
from tests.trainer.conftest import TINY


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("codistill", ["rollout.verify_sync=true", "rollout.verify_atol=1e-4"]),
        ("grpo", ["algorithm.grpo_model=small"]),
        ("grpo", ["algorithm.grpo_model=large"]),
        ("opd", ["rollout.weight_sync=disk"]),
        ("kd_grpo", []),
        ("sft", ["algorithm.sft.samples_per_problem=2"]),
    ],
)
def test_mode_runs_two_steps(mode, extra, tiny_overrides, tmp_path):
    assert train_main(str(TINY), [*tiny_overrides, f"algorithm.mode={mode}", *extra]) == 0
    run_dir = tmp_path / "run"
    metrics = rows(run_dir)
    # step 0: the evaluation right after the warm start, before any RL step
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert all(k.startswith("eval/") for k in metrics[0] if k != "step")
    last = metrics[-1]
    assert (run_dir / "checkpoints" / "step_000002" / "COMPLETE").exists()
    if mode == "sft":
        assert 0.0 <= last["sft/kept_frac"] <= 1.0
        return
    trains = {
        "codistill": {"small", "large"}, "opd": {"small"}, "kd_grpo": {"small"},
        "grpo": {"large"} if "algorithm.grpo_model=large" in extra else {"small"},
    }[mode]
    for name in ("small", "large"):
        assert (f"{name}/loss" in last) == (name in trains), (name, sorted(last))
    generator = "large" if "algorithm.grpo_model=large" in extra else "small"
    assert f"{generator}/task_reward" in last
    assert "eval/arith/small_accuracy" in last or generator == "large"
    # the engine samples from the weights the trainer scores with: same log-probs up to fp error
    assert last["rollout/logprob_diff_max"] < 1e-4
    if mode in ("codistill", "opd", "kd_grpo"):
        assert last["kd/approx_kl_small_large"] > 0  # KL(S||L) estimate of two different models
    else:
        assert "kd/approx_kl_small_large" not in last
    if mode == "opd":  # the task reward does not enter the small model's reward
        assert last["small/reward/task_mean"] == 0.0
    if mode == "codistill":
        assert 0 < last["large/is/ess"] <= 1 and last["large/is/weight_max"] <= 2.0
        # after every sync the engine scored a probe batch like the trainer (else the run would stop)
        assert last["rollout/sync_probe_logprob_diff_max"] <= 1e-4 and last["rollout/sync_mb"] > 0
