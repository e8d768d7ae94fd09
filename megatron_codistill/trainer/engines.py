"""The rollout engine of a run and how the generator's weights reach it.

Embedded (CPU default): every rank holds an in-process engine and receives the generator's full
weights through the exporter, bucket by bucket. SGLang: servers attached by URL or launched here;
rank 0 pushes the weights (to disk for `disk`, by NCCL broadcast for `nccl`) while the other ranks
drain the (collective) export, and every rank waits at a barrier until the servers serve the new
version before it sends its next prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from megatron_codistill.config import Config, RolloutConfig
from megatron_codistill.rollout import weight_sync as ws
from megatron_codistill.rollout.base import RolloutEngine


def embedded_engine(policy, r: RolloutConfig, *, pad_id: int, seed: int, worker: bool = False) -> RolloutEngine:
    """An embedded engine of `policy`'s architecture (random weights until its first sync): in this
    process, or with `worker` in a rollout worker process of its own (`rollout.worker_threads` threads)."""
    kwargs = dict(dtype=policy.cfg.dtype, pad_token_id=pad_id, max_batch_size=r.max_batch_size,
                  max_context=policy.arch.max_position_embeddings, prompt_overflow=r.prompt_overflow, seed=seed)
    if worker:
        from megatron_codistill.rollout.worker import WorkerEngine

        return WorkerEngine(policy.arch.to_hf_config(), threads=r.worker_threads, **kwargs)
    from megatron_codistill.rollout.embedded import EmbeddedEngine

    return EmbeddedEngine.from_config(policy.arch.to_hf_config(), **kwargs)


def build_engine(cfg: Config, policy, *, rank: int, pad_id: int) -> RolloutEngine:
    """The engine for `policy`'s architecture, holding `policy`'s current weights."""
    r = cfg.rollout
    if r.engine == "embedded":
        engine = embedded_engine(policy, r, pad_id=pad_id, seed=cfg.run.seed * 1000 + rank,
                                 worker=r.worker_process)
    else:
        from megatron_codistill.rollout.sglang import SGLangEngine

        s = r.sglang
        if s.launch and rank == 0 and not s.urls:
            raise ValueError(
                "rollout.sglang.launch: launch servers with slurm/codistill.sbatch (SGLANG_NODES) or "
                "`python -m sglang.launch_server`, then pass rollout.sglang.urls"
            )
        engine = SGLangEngine(s.urls, timeout=s.timeout_s, retries=s.retries)
    sync_engine(engine, policy, r, version=0, run_dir=cfg.run.dir)
    return engine



def strategy_of(r: RolloutConfig) -> str:
    if r.weight_sync != "auto":
        return r.weight_sync
    return "direct" if r.engine == "embedded" else "disk"


def sync_engine(engine: RolloutEngine, policy, r: RolloutConfig, *, version: int, run_dir: str = ".") -> dict:
    """Send `policy`'s weights to `engine` (collective over all ranks); returns sync metrics.

    With `rollout.verify_sync`, the engine then scores a fixed probe batch and must agree with the
    trainer's log-probs within `rollout.verify_atol` (WeightSyncMismatch otherwise).
    """
    strategy = strategy_of(r)
    buckets = policy.export_hf(int(r.bucket_mb * 2**20))
    source = not dist.is_initialized() or dist.get_rank() == 0
    stats = None
    if strategy == "direct":
        stats = ws.sync_weights(engine, buckets, version, "direct")
    elif strategy == "disk":
        root = Path(r.sync_dir or Path(run_dir) / "weight_sync")
        if r.engine == "embedded":  # one engine per rank: each rank writes and loads its own copy
            rank = dist.get_rank() if dist.is_initialized() else 0
            stats = ws.DiskSync(root / f"rank{rank}", hf_config=policy.arch.to_hf_config()).sync(
                engine, buckets, version)
        elif source:  # servers shared by all ranks: rank 0 writes and tells them
            stats = ws.DiskSync(root, hf_config=policy.arch.to_hf_config()).sync(engine, buckets, version)
        else:
            for _ in buckets:  # the export is collective
                pass
            engine._set_version(version)
        if dist.is_initialized():
            dist.barrier()
    elif strategy == "nccl":
        kw = {"master_address": ws.weight_group_address(r.sglang.weight_group_address, engine.urls)} if source else {}
        stats = ws.nccl_sync(engine, buckets, version, is_source=source, **kw)
        if dist.is_initialized():  # rank 0 returns once the servers serve `version`; nobody generates before
            dist.barrier()
    else:
        raise ValueError(f"rollout.weight_sync {strategy!r} is not valid; valid: auto, direct, disk, nccl")
    metrics = stats.metrics() if stats is not None else {}
    if r.verify_sync:
        probe = ws.probe_tokens(policy.arch.vocab_size)
        trainer_lp = policy.logprobs(torch.tensor(probe))  # collective
        if source or strategy == "direct":
            metrics.update(ws.verify_sync(engine, probe, trainer_lp, atol=r.verify_atol, version=version))
    return metrics
