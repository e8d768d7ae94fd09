"""Full HF-named tensors from a live sharded GPTModel, in buckets: the weight-sync source.

Collective semantics: `export_hf_weights` is a generator that communicates over `tp_group`
(all-gather of each TP-sharded tensor inside its PP stage) and `pp_group` (broadcast of each full
tensor from the stage that owns it). Every rank of the model group (all TP x PP ranks of one DP
replica) must create it and iterate it to the end, in lockstep; every rank receives every bucket.
Replicas (DP) export independently.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.mapping import entries, mcore_shape
from megatron_codistill.convert.model_io import agree, group_rank_size, layer_offset, local_entries, unwrap_model
from megatron_codistill.models.arch import ModelArch


@torch.no_grad()
def export_hf_weights(model, arch: ModelArch, *, tp_group, pp_group, bucket_bytes: int = 512 << 20,
                      dtype: torch.dtype | None = None) -> Iterator[list[tuple[str, Tensor]]]:
    """Yield lists of (HF name, full tensor) in HF order, each list about `bucket_bytes` large.

    A bucket closes once it holds at least `bucket_bytes` (a tensor is never split; a larger one
    makes a bucket of its own), the last one may be smaller. Tensors are unpadded (true vocab) and
    in `dtype` (default: the model's params_dtype). With TP = PP = 1 they may alias the model's
    parameters: copy what must outlive the next optimizer step. Tied embeddings export no lm_head.
    A mismatch between model and `arch` raises CheckpointError on every rank, before any transfer.
    """
    model = unwrap_model(model)
    tp_rank, tp = group_rank_size(tp_group)
    pp_rank, pp = group_rank_size(pp_group)
    try:
        mine, error = {e.mcore: p for p, e in local_entries(model, arch, tp) if e.rule.exported}, None
    except CheckpointError as err:  # raised on every rank below, not only here
        mine, error = {}, str(err)
    stage = (layer_offset(model), len(model.decoder.layers), model.pre_process, model.post_process, error)
    stages = [stage] * pp
    if pp > 1:  # every rank learns which layers each stage holds (uneven splits included)
        dist.all_gather_object(stages, stage, group=pp_group)
    # errors of any stage, then of any TP peer, reach every rank: all raise before the collectives below
    agree("; ".join(dict.fromkeys(s[-1] for s in stages if s[-1])) or None, tp_group)
    # One dtype on every rank (receivers allocate before data arrives); Megatron's local-spec norms
    # stay fp32 in a bf16 model, so the parameter dtypes themselves may differ between stages.
    dtype = dtype or model.config.params_dtype
    device = next(iter(mine.values())).device  # receivers allocate where the collectives run (GPU: NCCL)
    bucket, size = [], 0
    for owner, (first, count, pre, post, _) in enumerate(stages):
        for entry in entries(arch, range(first, first + count), pre=pre, post=post):
            if owner == pp_rank:
                local = mine[entry.mcore].detach()
                shards = [local]
                if tp > 1 and entry.layout.tp_axis is not None:
                    shards = [torch.empty_like(local) for _ in range(tp)]
                    dist.all_gather(shards, local.contiguous(), group=tp_group)
                full = entry.layout.merge(shards, arch).to(dtype)
            else:
                full = torch.empty(mcore_shape(entry, arch, tp), dtype=dtype, device=device)
            if pp > 1:
                dist.broadcast(full, src=dist.get_global_rank(pp_group, owner), group=pp_group)
            for name, tensor in zip(entry.hf, entry.layout.to_hf(full, arch)):
                bucket.append((name, tensor))
                size += tensor.numel() * tensor.element_size()
                if size >= bucket_bytes:
                    yield bucket
                    bucket, size = [], 0
    if bucket:
        yield bucket
