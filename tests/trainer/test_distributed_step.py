"""One `codistill` step on 2 ranks (large TP=2, small DP=2) reports the losses that a single-process
computation with Hugging Face models and the pure objectives gives on the same rollouts."""

import torch

from megatron_codistill import algo
from megatron_codistill.config import load_config
from tests.distributed import run_distributed
from tests.trainer.conftest import FAST, TINY


def parity_reward(responses: list[str], references: list[str], **_) -> list[float]:
    """A task reward random models can earn: 1 for an even number of characters."""
    return [float(len(r) % 2 == 0) for r in responses]


def _worker(run_dir: str):
    from megatron_codistill.trainer import step as step_mod
    from megatron_codistill.trainer.build import build_run

    cfg = load_config(TINY, [f"run.dir={run_dir}", *FAST, "large.tensor_parallel=2", "warm_start.small_steps=0",
                             "warm_start.large_steps=0", "reward.kind=plugin",
                             "reward.plugin=tests.trainer.test_distributed_step:parity_reward",
                             "algorithm.kd_alpha=0.7", "algorithm.clip_eps_high=0.28"])
    run = build_run(cfg)
    weights = {name: {k: v.clone() for b in p.export_hf(1 << 30) for k, v in b}
               for name, p in run.policies.items()}
    seen = {}
    gather = step_mod.gather_batch
    shape = step_mod.shape_task_rewards

    def keep_batch(*a, **k):
        seen["batch"] = gather(*a, **k)
        return seen["batch"]

    def keep_task(*a, **k):
        seen["task"] = shape(*a, **k)
        return seen["task"]

    step_mod.gather_batch, step_mod.shape_task_rewards = keep_batch, keep_task
    metrics = run.scheduler.step(1)
    return {"batch": seen["batch"], "task": seen["task"], "weights": weights, "metrics": metrics,
            "arch": {k: p.arch for k, p in run.policies.items()}}


def _hf_logprobs(arch, weights, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(arch.to_hf_config()).eval()
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        logits = model(tokens).logits.float()[:, :-1]
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def test_two_rank_codistill_step_matches_single_process_reference(tmp_path):
    out = run_distributed(_worker, 2, str(tmp_path / "run"))
    r0, r1 = out
    assert torch.equal(r0["batch"].tokens, r1["batch"].tokens)  # every rank sees the global batch
    batch, task, m = r0["batch"], r0["task"], r0["metrics"]
    assert 0 < float(task.mean()) < 1, "the test needs groups with reward variance"
    lp = {k: _hf_logprobs(r0["arch"][k], r0["weights"][k], batch.tokens) for k in ("small", "large")}
    mask = batch.response_mask
    G = batch.group_size
    small = algo.small_model_loss(lp["small"], lp["small"], lp["large"], task, mask, group_size=G, alpha=0.7,
                                  kappa=10.0, options=algo.PolicyLossOptions(eps_high=0.28))
    large = algo.large_model_loss(lp["large"], lp["large"], batch.behaviour_logprobs, task, mask,
                                  group_size=G, scheme="token_tis", cap=2.0,
                                  options=algo.PolicyLossOptions(eps_high=0.28))
    assert abs(m["small/loss"] - float(small.loss)) < 1e-5
    assert abs(m["large/loss"] - float(large.loss)) < 1e-5
    assert abs(m["small/kd/reward_mean"] - float(small.metrics["kd/reward_mean"])) < 1e-5
    # metrics are those of the whole batch, whatever the micro-batches (large.micro_batch_size = 8 of 16 rows)
    assert abs(m["large/is/ess"] - float(large.metrics["is/ess"])) < 1e-5
    # the engine's behaviour log-probs are the small model's own (temperature 1, no truncation)
    assert torch.allclose(batch.behaviour_logprobs * mask, lp["small"] * mask, atol=1e-4)
