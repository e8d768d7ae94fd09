"""Rollout engines and weight sync.

- `base`: the typed boundary (SamplingParams, Rollout, RolloutBatch, RolloutEngine).
- `embedded.EmbeddedEngine`: a transformers model in the trainer's process (the CPU default).
- `sglang.SGLangEngine`: SGLang servers over HTTP (attach by URL or launch); no sglang import.
- `weight_sync`: bucketed sync strategies (direct, disk, nccl), post-sync probe check, mismatch metric.
"""

from megatron_codistill.rollout.base import Rollout, RolloutBatch, RolloutEngine, SamplingParams
from megatron_codistill.rollout.embedded import EmbeddedEngine
from megatron_codistill.rollout.http_client import RolloutServerError
from megatron_codistill.rollout.sglang import SGLangEngine
from megatron_codistill.rollout.weight_sync import (
    STRATEGIES,
    SyncStats,
    WeightSyncMismatch,
    logprob_mismatch,
    make_strategy,
    sync_weights,
    verify_sync,
)

__all__ = [
    "STRATEGIES",
    "EmbeddedEngine",
    "Rollout",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutServerError",
    "SGLangEngine",
    "SamplingParams",
    "SyncStats",
    "WeightSyncMismatch",
    "logprob_mismatch",
    "make_strategy",
    "sync_weights",
    "verify_sync",
]
