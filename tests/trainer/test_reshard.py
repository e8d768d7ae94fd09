"""--resume at another layout: the checkpoint's Megatron distributed checkpoint reshards both models'
weights and optimizer states, and the continued run matches the run that never changed layout.

The uninterrupted references run 4 steps at world size 2 (a checkpoint after every step); a copy of each
stopped after its step-2 checkpoint is resumed at another layout and runs steps 3 and 4 again:
- large TP=2 -> TP=1 (the large model's DP 1 -> 2), the distributed optimizer on both models, the small
  model in bf16;
- large PP=2 -> PP=1 with the large model in bf16 and tied embeddings (the last stage's copy of the
  embedding is never written, and loads from it);
- world size 2 -> 1 from the first reference (large TP=2 -> 1, the small model's DP 2 -> 1: its fp32 main
  copies, moments and steps come from the distributed optimizer's merged shards).
Exact state: a job resumed at the new layout saves what it restored, and every tensor (weights, Adam
moments, fp32 main copies), step count and schedule equals the reference's checkpoint bitwise.
Continued metrics: at the same world size every rank keeps its sampling stream, so the rollouts are the
same and steps 3-4 equal the reference's within 1e-5 relative in fp32 (TP and DP change reduction
orders; ~1e-7 measured) and 5e-3 with the bf16 large model (its tied-embedding gradients are summed in
another order, at bf16's unit roundoff 3.9e-3; <= 1.2e-3 measured). Resuming without the Adam moments
moves step 4's losses by ~3e-2. At another world size the per-rank streams cannot continue (they are
re-seeded), so step 3 is compared on the reference's own rollouts: the world-1 job takes step 3 on the
reference's gathered batch and task rewards; its metrics and updated weights equal the reference's
within 1e-5 / 2e-6 (1e-7 / 1.2e-7 measured).
Rewards: the parity plugin (groups with reward variance, so the large model learns too); lr 1e-2.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_codistill.config import load_config
from tests.distributed import run_distributed
from tests.trainer.conftest import FAST, TINY
from tests.trainer.test_resume import ENV, TIMING

BASE = [o for o in FAST if not o.startswith(("run.steps", "run.eval_every"))] + [
    "run.steps=4", "run.eval_every=0", "checkpoint.every=1", "checkpoint.keep_last=0", "reward.kind=plugin",
    "reward.plugin=tests.trainer.test_distributed_step:parity_reward", "small.optimizer.lr=1e-2",
    "large.optimizer.lr=1e-2"]
DIST_OPT = ["large.optimizer.use_distributed_optimizer=true", "small.optimizer.use_distributed_optimizer=true"]
TP2 = ["large.tensor_parallel=2", "small.dtype=bf16", *DIST_OPT]
PP2 = ["large.pipeline_parallel=2", "large.dtype=bf16", "large.arch.tie_word_embeddings=true"]
# the same on every DP layout: losses (global denominators), global grad norms, means over all rollouts
COMPARED = ("small/loss", "large/loss", "small/grad_norm", "large/grad_norm", "small/kd/reward_mean",
            "small/reward/mean", "large/reward/mean", "small/response_length", "small/lr", "large/lr")


def train(run_dir, overrides, *, nproc: int, resume: bool = False) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "megatron_codistill.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "megatron_codistill.cli"]
    cmd = [*launcher, "train", str(TINY), f"run.dir={run_dir}", *BASE, *overrides, *(["--resume"] if resume else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(ENV, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def rows(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)} for line in lines]


def stopped_after_step_2(reference, tmp_path):
    """A copy of the reference run as a job stopped right after its step-2 checkpoint left it."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for step in (3, 4):
        shutil.rmtree(run_dir / "checkpoints" / f"step_{step:06d}")
    return run_dir


def _reference(run_dir: str, overrides: list[str]) -> list[dict]:
    """`codistill train` in this job, recording each step's gathered rollouts and task rewards."""
    from megatron_codistill.trainer import step as step_mod
    from megatron_codistill.trainer.train import train_main

    seen: list[dict] = []
    gather, shape = step_mod.gather_batch, step_mod.shape_task_rewards

    def keep_batch(*a, **k):
        seen.append({"batch": gather(*a, **k)})
        return seen[-1]["batch"]

    def keep_task(*a, **k):
        seen[-1]["task"] = shape(*a, **k)
        return seen[-1]["task"]

    step_mod.gather_batch, step_mod.shape_task_rewards = keep_batch, keep_task
    train_main(str(TINY), [f"run.dir={run_dir}", *BASE, *overrides])
    return seen


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """{name: (run dir, [per step: {"batch", "task"}])} of the uninterrupted world-2 runs."""
    root = tmp_path_factory.mktemp("references")
    return {name: (root / name, run_distributed(_reference, 2, str(root / name), layout)[0])
            for name, layout in (("tp2", TP2), ("pp2", PP2))}


def assert_continues(run_dir, reference, rel: float):
    ours, ref = rows(run_dir), rows(reference)
    assert [r["step"] for r in ours] == [1, 2, 3, 4]  # each step once
    assert ours[:2] == ref[:2]
    for a, b in zip(ours[2:], ref[2:]):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (a["step"], key, a[key], b[key])


def _resumed(run_dir: str, overrides: list[str], resave: str, inject: dict | None = None) -> dict:
    """Resume `run_dir` (its newest checkpoint: step 2) in this job and save what it restored as a
    distributed checkpoint `resave` of this job's layout; with `inject`, take step 3 on those rollouts."""
    import torch.distributed as dist

    from megatron_codistill.convert.mcore_ckpt import save_sharded
    from megatron_codistill.trainer import step as step_mod
    from megatron_codistill.trainer.build import build_run
    from megatron_codistill.trainer.train import begin

    run = build_run(load_config(TINY, [f"run.dir={run_dir}", *BASE, *overrides]))
    assert begin(run, resume=True).step == 2
    if run.rank == 0:
        Path(resave).mkdir()
    dist.barrier()
    save_sharded({name: p.state_dict() for name, p in run.policies.items()}, resave)
    if inject is None:
        return {}
    step_mod.gather_batch = lambda *a, **k: inject["batch"]
    step_mod.shape_task_rewards = lambda *a, **k: inject["task"]
    try:
        metrics = run.scheduler.step(3)
    finally:
        run.engine.shutdown()
    weights = {name: {k: v.clone() for bucket in p.export_hf(1 << 30) for k, v in bucket}
               for name, p in run.policies.items()}
    return {"metrics": metrics, "weights": weights}


def stored_state(directory) -> tuple[dict, dict]:
    """(every tensor in full, the plain values) of a distributed checkpoint; tensors as plain values."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_codistill.convert.mcore_ckpt import load_sharded

    meta = dist_checkpointing.load_tensors_metadata(str(directory))
    request = {k: ShardedTensor.from_rank_offsets(k, torch.empty(m.global_shape, dtype=m.dtype), replica_id=0)
               for k, m in meta.items()}
    plain = lambda v: ({k: plain(x) for k, x in v.items()} if isinstance(v, dict) else  # noqa: E731
                       v.tolist() if isinstance(v, torch.Tensor) else v)
    loaded = load_sharded(request, str(directory))  # the plain values merged with the requested tensors
    return {k: loaded[k] for k in request}, plain(dist_checkpointing.load_common_state_dict(str(directory)))


def assert_same_state(saved, resaved) -> None:
    """Every weight, Adam moment, main copy, step and schedule restored at the new layout equals the saved
    one bitwise (vocab tensors: the rows both hold; the padding to a multiple of 128 x TP differs)."""
    from megatron_codistill.convert.mcore_ckpt import process_group

    with process_group():
        (a, common_a), (b, common_b) = stored_state(saved), stored_state(resaved)
    assert common_a == common_b
    assert a.keys() == b.keys() and any(k.startswith("optimizer.state.exp_avg_sq.") for k in a)
    for key, x in a.items():
        y = b[key]
        n = min(x.shape[0], y.shape[0])  # vocab rows past the smaller padding are never used
        assert torch.equal(x[:n], y[:n]), key


@pytest.mark.slow
def test_tp2_to_tp1_continues_the_run(references, tmp_path):
    reference, _ = references["tp2"]
    run_dir = stopped_after_step_2(reference, tmp_path)
    out = train(run_dir, TP2[1:], nproc=2, resume=True)
    assert ("resharded model weights and optimizer states from world size 2, large TP=2 PP=1 to world size 2, "
            "large TP=1 PP=1") in out.stderr
    assert "re-seeded" not in out.stderr
    assert_continues(run_dir, reference, rel=1e-5)


@pytest.mark.slow
def test_pp2_to_pp1_restores_the_state_exactly_and_continues_in_bf16(references, tmp_path):
    reference, _ = references["pp2"]
    run_dir = stopped_after_step_2(reference, tmp_path)
    out = train(run_dir, PP2[1:], nproc=2, resume=True)
    assert "from world size 2, large TP=1 PP=2 to world size 2, large TP=1 PP=1" in out.stderr
    assert_continues(run_dir, reference, rel=5e-3)
    again = stopped_after_step_2(reference, tmp_path / "again")
    run_distributed(_resumed, 2, str(again), PP2[1:], str(tmp_path / "resaved"))
    assert_same_state(reference / "checkpoints" / "step_000002" / "dist", tmp_path / "resaved")


@pytest.mark.slow
def test_world_2_to_1_restores_the_state_exactly_and_continues(references, tmp_path):
    from megatron_codistill.config import model_arch
    from megatron_codistill.convert.mcore_ckpt import process_group
    from megatron_codistill.trainer.export import full_hf_tensors

    reference, recorded = references["tp2"]
    run_dir = stopped_after_step_2(reference, tmp_path)
    out = train(run_dir, TP2[1:], nproc=1, resume=True)
    assert ("resharded model weights and optimizer states from world size 2, large TP=2 PP=1 to world size 1, "
            "large TP=1 PP=1; generators re-seeded") in out.stderr
    ours, ref = rows(run_dir), rows(reference)
    assert [r["step"] for r in ours] == [1, 2, 3, 4] and ours[:2] == ref[:2]
    assert [r["small/lr"] for r in ours[2:]] == [r["small/lr"] for r in ref[2:]]  # the schedules continue

    # the restored state, and step 3 on the reference's rollouts against the reference's step 3
    inject = recorded[2]
    assert 0 < float(inject["task"].mean()) < 1, "the step needs groups with reward variance"
    one = run_distributed(_resumed, 1, str(stopped_after_step_2(reference, tmp_path / "one")), TP2[1:],
                          str(tmp_path / "resaved"), inject)[0]
    assert_same_state(reference / "checkpoints" / "step_000002" / "dist", tmp_path / "resaved")
    for key in COMPARED:
        assert one["metrics"][key] == pytest.approx(ref[2][key], rel=1e-5, abs=1e-7), key
    cfg = load_config(TINY, BASE)
    with process_group():
        for name, weights in one["weights"].items():
            saved = full_hf_tensors(model_arch(getattr(cfg, name), name), str(reference / "checkpoints" /
                                    "step_000003" / "dist"), prefix=f"{name}.")
            assert saved.keys() == weights.keys()
            for key, w in weights.items():
                err = float((saved[key].float() - w.float()).abs().max())
                assert err <= 2e-6, (name, key, err)


def test_a_damaged_distributed_checkpoint_file_falls_back_to_the_previous_checkpoint(tmp_path):
    """Every file of `dist/` is in the marker (size, SHA-256); the layout-independent part reshards."""
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_codistill.convert.mcore_ckpt import process_group
    from megatron_codistill.trainer.checkpoint import CheckpointManager

    saved = {"world_size": 1, "large": {"tensor_parallel": 1, "pipeline_parallel": 2}}
    with process_group():
        manager = CheckpointManager(tmp_path, rank=0, world_size=1, layout=saved)
        for step in (1, 2):
            weights = {"w": ShardedTensor.from_rank_offsets("w", torch.full((3, 2), float(step)), replica_id=0)}
            manager.save(f"step_{step:06d}", {"rng": step}, {"step": step}, sharded=weights)
        newest = tmp_path / "checkpoints" / "step_000002"
        listed = json.loads((newest / "COMPLETE").read_text())["files"]
        assert {n for n in listed if n.startswith("dist/")} == {
            f"dist/{p.name}" for p in (newest / "dist").iterdir()}
        shard = next((newest / "dist").glob("*.distcp"))
        size = shard.stat().st_size
        shard.write_bytes(shard.read_bytes()[:-8])

        other = {"world_size": 1, "large": {"tensor_parallel": 1, "pipeline_parallel": 1}}
        fresh = CheckpointManager(tmp_path, rank=0, world_size=1, layout=other)
        warnings = logging.Handler(logging.WARNING)
        warnings.emit = lambda record: said.append(record.getMessage())
        said, logger = [], logging.getLogger("megatron_codistill.trainer.checkpoint")
        logger.addHandler(warnings)
        try:
            loaded = fresh.load_latest()
        finally:
            logger.removeHandler(warnings)
        assert len(said) == 1 and "trying the previous one" in said[0]
        assert f"{shard}: {size - 8} bytes, the marker records {size} (truncated?)" in said[0]
        assert loaded.path.name == "step_000001" and loaded.rank_state == {"rng": 1} and loaded.same_ranks
        assert loaded.resharded_from == saved
        assert fresh.describe_reshard(loaded) == ("from world size 1, large TP=1 PP=2 to world size 1, "
                                                  "large TP=1 PP=1")
        request = {"w": ShardedTensor.from_rank_offsets("w", torch.zeros(3, 2), replica_id=0)}
        assert torch.equal(loaded.load(request)["w"], torch.ones(3, 2))
