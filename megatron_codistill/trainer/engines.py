"""The rollout engine of a run and how the generator's weights reach it.

Embedded (CPU default): every rank holds an in-process engine and receives the generator's full
weights through the exporter, bucket by bucket. SGLang: servers attached by URL or launched here;
rank 0 pushes the weights (to disk for `disk`, by NCCL broadcast for `nccl`) and every rank then
serves its own prompts through the servers.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from megatron_codistill.config import Config, RolloutConfig
from megatron_codistill.rollout.base import RolloutEngine


def build_engine(cfg: Config, policy, *, rank: int) -> RolloutEngine:
    """The engine for `policy`'s architecture, holding `policy`'s current weights."""
    r = cfg.rollout
    if r.engine == "embedded":
        from megatron_codistill.rollout.embedded import EmbeddedEngine

        engine = EmbeddedEngine.from_config(
            policy.arch.to_hf_config(), dtype=policy.cfg.dtype, pad_token_id=_pad_id(cfg),
            max_batch_size=r.max_batch_size, max_context=policy.arch.max_position_embeddings,
            prompt_overflow=r.prompt_overflow, seed=cfg.run.seed * 1000 + rank,
        )
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


def _pad_id(cfg: Config) -> int:
    from megatron_codistill.trainer.prompts import load_tokenizer

    return load_tokenizer(cfg).pad_token_id


def strategy_of(engine: RolloutEngine, r: RolloutConfig) -> str:
    if r.weight_sync != "auto":
        return r.weight_sync
    return "direct" if r.engine == "embedded" else "disk"


def sync_engine(engine: RolloutEngine, policy, r: RolloutConfig, *, version: int, run_dir: str = ".") -> None:
    """Send `policy`'s weights to `engine` (collective over all ranks)."""
    strategy = strategy_of(engine, r)
    bucket = int(r.bucket_mb * 2**20)
    if strategy == "direct":
        engine.update_weights((kv for b in policy.export_hf(bucket) for kv in b), version)
        return
    if strategy == "disk":
        out = Path(r.sync_dir or Path(run_dir) / "weight_sync") / f"v{version:06d}"
        policy.save_hf(out, tokenizer_dir=None)
        if dist.get_rank() == 0:
            engine.update_weights_from_disk(str(out), version)
        else:
            engine._set_version(version)
        dist.barrier()
        return
    if strategy == "nccl":
        from megatron_codistill.rollout.weight_sync import nccl_sync

        nccl_sync(engine, policy.export_hf(bucket), version, is_source=dist.get_rank() == 0)
        return
    raise ValueError(f"rollout.weight_sync {strategy!r} is not valid; valid: auto, direct, disk, nccl")
