"""A full `codistill` step on 4 gloo ranks equals a single-process step on the same rollouts: both
losses, the batch metrics and both models' updated weights.

Layouts: large TP=2 x PP=2 (DP=1) with token-budget micro-batches (shapes vary through the pipeline)
and full recompute; large TP=2 x DP=2 with the distributed optimizer and micro-batches of 3 rows (not
whole groups), the small model there with a token budget (its replicas may run different numbers of
micro-batches). The small model is DP=4 in both. The reference is the same trainer on one rank
(TP = PP = DP = 1, fixed micro-batches, no recompute), started from the 4-rank job's initial weights
and fed its gathered batch and task rewards. Adam's eps is 1e-3 so that its first step is a smooth
function of the gradient (with 1e-8 it is about lr * sign(g), where fp noise on tiny gradients flips
signs); tolerances are then 1e-5 on losses and 2e-6 on weights (updates are ~1e-2).
"""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.config import load_config
from tests.distributed import run_distributed
from tests.trainer.conftest import FAST, TINY

pytestmark = pytest.mark.slow

COMMON = [*FAST, "warm_start.small_steps=0", "warm_start.large_steps=0", "reward.kind=plugin",
          "reward.plugin=tests.trainer.test_distributed_step:parity_reward", "algorithm.kd_alpha=0.7",
          "algorithm.clip_eps_high=0.28", "run.eval_every=0"]
for _name in ("small", "large"):
    COMMON += [f"{_name}.optimizer.lr=1e-2", f"{_name}.optimizer.warmup_steps=0", f"{_name}.optimizer.adam_eps=1e-3"]
LAYOUTS = {
    "tp2_pp2": ["large.tensor_parallel=2", "large.pipeline_parallel=2", "large.micro_batch_tokens=48",
                "large.recompute=full"],
    "tp2_dp2": ["large.tensor_parallel=2", "large.optimizer.use_distributed_optimizer=true",
                "large.micro_batch_size=3", "small.micro_batch_tokens=48"],
}
# Losses add up over replicas exactly (global denominators); a batch metric is the mean over DP replicas
# of the replica's value, which equals the one-rank value only for means over equal row counts, or
# when the model has one replica (the large model at TP=2 x PP=2).
COMPARED = ("small/loss", "large/loss", "small/kd/reward_mean", "small/reward/mean", "large/reward/mean")
ONE_REPLICA = ("large/is/ess", "large/is/log_ratio_mean", "large/adv/abs_mean", "large/loss/num_tokens")


def _full_weights(policy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for bucket in policy.export_hf(1 << 30) for k, v in bucket}


def _step(run_dir: str, overrides: list[str], inject: dict | None = None):
    """Build the run, take one RL step (with `inject`ed batch and task rewards), return what happened."""
    from megatron_codistill.trainer import step as step_mod
    from megatron_codistill.trainer.build import build_run

    run = build_run(load_config(TINY, [f"run.dir={run_dir}", *COMMON, *overrides]))
    seen = {"layouts": {k: p.layout.describe() for k, p in run.policies.items()}}
    before = {k: _full_weights(p) for k, p in run.policies.items()}
    if inject is None:  # the reference starts from these weights
        from megatron_codistill.convert.live import save_hf_from_model

        for name, p in run.policies.items():
            save_hf_from_model(p.module, p.arch, f"{run_dir}/init_{name}", tp_group=p.layout.tp_group,
                               pp_group=p.layout.pp_group)
    gather, shape = step_mod.gather_batch, step_mod.shape_task_rewards

    def keep_batch(*a, **k):
        seen["batch"] = inject["batch"] if inject else gather(*a, **k)
        return seen["batch"]

    def keep_task(*a, **k):
        seen["task"] = inject["task"] if inject else shape(*a, **k)
        return seen["task"]

    step_mod.gather_batch, step_mod.shape_task_rewards = keep_batch, keep_task
    try:
        seen["metrics"] = run.scheduler.step(1)
    finally:
        step_mod.gather_batch, step_mod.shape_task_rewards = gather, shape
    seen["delta"] = {k: {n: w - before[k][n] for n, w in _full_weights(p).items()} for k, p in run.policies.items()}
    return seen


def _reference(run_dir: str, init_dir: str, inject: dict):
    return _step(run_dir, [f"small.checkpoint={init_dir}/init_small", f"large.checkpoint={init_dir}/init_large"],
                 inject)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_four_rank_step_equals_single_process(tmp_path, layout):
    job = str(tmp_path / "job")
    out = run_distributed(_step, 4, job, LAYOUTS[layout])
    r0 = out[0]
    tp, pp = (2, 2) if layout == "tp2_pp2" else (2, 1)
    assert r0["layouts"]["large"].startswith(f"TP={tp} PP={pp} DP={4 // (tp * pp)}")
    assert r0["layouts"]["small"].startswith("TP=1 PP=1 DP=4")
    for r in out[1:]:  # one global batch, identical metrics and weights on every rank
        assert torch.equal(r["batch"].tokens, r0["batch"].tokens)
        assert r["metrics"]["small/loss"] == r0["metrics"]["small/loss"]
        assert r["metrics"]["large/loss"] == r0["metrics"]["large/loss"]
    assert 0 < float(r0["task"].mean()) < 1, "the test needs groups with reward variance"
    ref = run_distributed(_reference, 1, str(tmp_path / "ref"), job, {"batch": r0["batch"], "task": r0["task"]})[0]
    assert ref["layouts"]["large"].startswith("TP=1 PP=1 DP=1")
    m, m_ref = r0["metrics"], ref["metrics"]
    for key in COMPARED + (ONE_REPLICA if pp == 2 else ()):
        assert abs(m[key] - m_ref[key]) < 1e-5, (key, m[key], m_ref[key])
    packed = "large" if layout == "tp2_pp2" else "small"
    assert m[f"{packed}/pad_frac"] < m[f"{packed}/pad_frac_fixed"]
    for name in ("small", "large"):
        delta, delta_ref = r0["delta"][name], ref["delta"][name]
        assert delta.keys() == delta_ref.keys()
        moved = max(float(d.abs().max()) for d in delta_ref.values())
        assert moved > 1e-3, f"the {name} model's step must move its weights"
        for key, d in delta.items():
            err = float((d - delta_ref[key]).abs().max())
            assert err <= 2e-6, (name, key, err)
