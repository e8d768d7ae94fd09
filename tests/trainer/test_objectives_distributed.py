"""2 gloo ranks, large model TP=1 x DP=2: learned rewards scored per rank and gathered equal one process scoring
every row; a retraining round leaves the same reward model on both ranks; the reference-conditioned teacher,
each replica scoring its rows, equals a single-process HF computation with the gold in context."""

import pytest
import torch

from megatron_codistill.config import load_config
from tests.distributed import run_distributed
from tests.trainer.conftest import FAST, TINY

MODELS = TINY.parent / "reward_models"


def _worker(run_dir: str):
    from megatron_codistill.rewards.learned import LearnedReward, load_reward_model
    from megatron_codistill.trainer import step as step_mod
    from megatron_codistill.trainer.build import build_run
    from megatron_codistill.trainer.retrain import after_step
    from megatron_codistill.trainer.task_reward import ModelTaskReward, sequences

    cfg = load_config(TINY, [f"run.dir={run_dir}", *FAST, "run.eval_every=0", "algorithm.supervision=process",
                             f"reward.process_model={MODELS / 'process'}", "reward.retrain.every=1"])
    run = build_run(cfg)
    seen = {}
    gather = step_mod.gather_batch
    step_mod.gather_batch = lambda *a, **k: seen.setdefault("batch", gather(*a, **k))
    metrics = run.scheduler.step(1)
    metrics.update(after_step(run, 1))
    batch = seen["batch"]
    gathered, mask, _ = run.step_rewards(batch)  # collective: each rank scored its rows
    alone = []
    for i in range(batch.tokens.shape[0]):  # this rank, every row, one at a time
        steps = run.step_rewards.steps(batch, i)
        p = int(batch.prompt_lengths[i])
        one = sequences(batch, slice(i, i + 1))
        alone.append(run.step_rewards.model.score_steps(one, [[p + s.end for s in steps]]))
    outcome = load_reward_model(str(MODELS / "outcome"), head="sequence", seed=0, vocab_size=16, pad_token_id=0,
                                what="test")
    task = ModelTaskReward(outcome, pad_token_id=0, correct=1.0)(batch)
    task_alone = torch.sigmoid(torch.tensor(LearnedReward(outcome, pad_token_id=0).score_ids(sequences(batch))))
    # reference-conditioned scores with the large model data parallel (DP=2): each replica scores its rows
    from megatron_codistill import algo
    from megatron_codistill.trainer.conditioning import Conditioner

    run.cfg.algorithm.kd_reference, run.cfg.algorithm.kd_context = "gold", "{reference};{prompt}"
    cond = Conditioner(run)
    lengths = batch.prompt_lengths + batch.response_lengths
    plain = run.policies["large"].logprobs(batch.tokens, lengths=lengths)
    conditioned, kd_metrics = cond.teacher_logprobs(run, batch, plain)
    small = run.policies["small"].logprobs(batch.tokens, lengths=lengths)
    G = batch.group_size
    kd = {"batch": batch, "d": algo.kd_log_ratio(conditioned, small, batch.response_mask), "metrics": kd_metrics,
          "weights": {n: {k: v.clone() for b in p.export_hf(1 << 30) for k, v in b} for n, p in run.policies.items()},
          "arch": {k: p.arch for k, p in run.policies.items()}, "large_dp": run.policies["large"].layout.dp,
          "solutions": [cond.index[tuple(batch.tokens[g * G, : int(batch.prompt_lengths[g * G])].tolist())].solution
                        for g in range(batch.num_groups)]}
    return {"gathered": gathered, "mask": mask, "alone": alone, "metrics": metrics, "task": task, "kd": kd,
            "task_alone": task_alone, "rm": {k: v.clone() for k, v in run.retrainer.model.state_dict().items()}}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_distributed(_worker, 2, str(tmp_path_factory.mktemp("run")))


def test_two_ranks_share_the_scoring_and_keep_one_reward_model(ranks):
    r0, r1 = ranks
    # the global batch (16 rollouts; those without a step have no label), labelled on every rank
    assert 8 < r0["metrics"]["retrain/examples"] <= 16 and r0["metrics"] == {**r0["metrics"], **{
        k: v for k, v in r1["metrics"].items() if k.startswith("retrain/")}}
    for r in (r0, r1):
        rows = [row[0] for row in r["alone"]]
        values = [torch.sigmoid(torch.tensor(v)) for v in rows]
        for i, v in enumerate(values):
            got = r["gathered"][i][r["mask"][i] > 0]
            assert torch.allclose(got, v, atol=1e-5), i
        assert torch.allclose(r["task"], r["task_alone"], atol=1e-5)
    assert torch.equal(r0["gathered"], r1["gathered"])
    for k, v in r0["rm"].items():
        assert torch.equal(v, r1["rm"][k]), k


def test_conditioned_teacher_with_a_data_parallel_large_model_equals_hf(ranks):
    from transformers import AutoTokenizer

    from tests.trainer.test_objectives_conditioning import _check

    r0, r1 = ranks
    assert r0["kd"]["large_dp"] == 2 and torch.equal(r0["kd"]["d"], r1["kd"]["d"])
    _check(r0["kd"], AutoTokenizer.from_pretrained(str(TINY.parent / "tokenizer")), r0["kd"]["solutions"])
