"""Learned reward models on 2 gloo ranks: each rank scores its share of the global batch and the gathered
scores equal one process scoring every row; a retraining round leaves the same reward model on both ranks."""

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
    return {"gathered": gathered, "mask": mask, "alone": alone, "metrics": metrics, "task": task,
            "task_alone": task_alone, "rm": {k: v.clone() for k, v in run.retrainer.model.state_dict().items()}}


def test_two_ranks_share_the_scoring_and_keep_one_reward_model(tmp_path):
    r0, r1 = run_distributed(_worker, 2, str(tmp_path / "run"))
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
