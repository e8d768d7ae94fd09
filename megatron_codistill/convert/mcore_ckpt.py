"""Megatron-Core distributed checkpoints (`torch_dist` format) built from the mapping table.

The checkpoint holds each tensor under its Megatron sharded key, layers stacked on a leading axis
([L, ...]), with the global (TP=1) layout: fused QKV by query group, fc1 = [gate; up], vocab rows
padded with zeros. It is independent of the TP/PP it was saved from: loading at another TP/PP reads
the slices each rank needs (resharding on load). The keys and layouts are those of
`GPTModel.sharded_state_dict()`, so Megatron can load it too; this module builds the sharded state
dict from the table instead, because GPTModel's version reads the global `parallel_state` (data
parallel rank of tied embeddings on the last PP stage), which this project never initialises.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy
from torch import Tensor

from megatron_codistill.convert.mapping import Entry

FORMAT = "codistill-mcore-torch_dist/1"
"""`format` in the marker of a Megatron checkpoint written by this package."""


def sharded_tensors(entry: Entry, local: Tensor, *, num_layers: int, tp_rank: int, tp: int,
                    dp_rank: int = 0, key: str | None = None, copy: bool = False) -> dict[str, ShardedTensor]:
    """Megatron ShardedTensors describing `local` (this rank's shard of `entry`) in the global tensor.

    Layer tensors are stacked on a leading axis of size num_layers. Only replica (0, 0, 0) of a tensor
    is written on save: replicated tensors on tp_rank 0, every tensor on dp_rank 0. The keys of the
    returned dict are local names, the ShardedTensor keys global: `key` (default `entry.ckpt`).
    copy: `local` is a copy of another tensor stored under the same key (the tied output layer of a
    last pipeline stage): never written, loaded from the tensor it copies.
    """
    # The layer axis is a real axis of `data` (a view with a leading 1), not Megatron's
    # prepend_axis_num: that legacy path assumes no other shard lives on the same rank, which fails
    # when one process reads a single layer of a checkpoint.
    layered = entry.layer is not None
    data = local.unsqueeze(0) if layered else local
    pre = ((0, entry.layer, num_layers),) if layered else ()
    kw = dict(allow_shape_mismatch=entry.rule.layout == "vocab")
    key, layout, copy_id = key or entry.ckpt, entry.layout, int(copy)
    if layout.tp_axis is None:
        return {entry.mcore: ShardedTensor.from_rank_offsets(
            key, data, *pre, replica_id=(copy_id, tp_rank, dp_rank), **kw)}
    axis = layout.tp_axis + len(pre)
    if not layout.halves:
        return {entry.mcore: ShardedTensor.from_rank_offsets(
            key, data, *pre, (axis, tp_rank, tp), replica_id=(copy_id, 0, dp_rank), **kw)}
    first, second = data.chunk(2, dim=axis)  # [gate_i; up_i] -> pieces i and tp + i of 2 tp
    return {f"{entry.mcore}/0": ShardedTensor.from_rank_offsets(
                key, first, *pre, (axis, tp_rank, 2 * tp), replica_id=(copy_id, 0, dp_rank), **kw),
            f"{entry.mcore}/1": ShardedTensor.from_rank_offsets(
                key, second, *pre, (axis, tp + tp_rank, 2 * tp), replica_id=(copy_id, 0, dp_rank), **kw)}


def gather_loaded(entry: Entry, loaded: dict[str, Tensor]) -> Tensor:
    """This rank's tensor of `entry` from what `load_sharded` returned for `sharded_tensors(entry, ...)`."""
    if entry.layout.halves:
        pieces = [loaded[f"{entry.mcore}/0"], loaded[f"{entry.mcore}/1"]]
        out = torch.cat(pieces, dim=entry.layout.tp_axis + 1)
    else:
        out = loaded[entry.mcore]
    return out.squeeze(0) if entry.layer is not None else out


def param_factory(entry: Entry, param: Tensor, *, key: str, num_layers: int, tp_rank: int, tp: int,
                  dp_rank: int) -> ShardedTensorFactory:
    """One live parameter as a Megatron ShardedTensorFactory whose `data` is the parameter itself.

    Megatron's optimizers find a parameter's state by the identity of `data` (their
    `sharded_state_dict(model_sharded_state_dict)`) and rebuild the factory around each state tensor
    (Adam moments, fp32 main copy) with the key prefixed, so every state tensor is stored exactly as its
    parameter: under a layout-independent key, resharded on load. `build_fn` gives `sharded_tensors`
    of whatever tensor it is handed, `merge_fn` puts the loaded pieces back together.
    """
    copy = not entry.rule.exported

    def build(key, data, replica_id, flattened_range):
        assert flattened_range is None, f"{key}: flattened state (the distributed optimizer saves fully_reshardable)"
        return sharded_tensors(entry, data.detach(), num_layers=num_layers, tp_rank=tp_rank, tp=tp,
                               dp_rank=dp_rank, key=key, copy=copy)

    return ShardedTensorFactory(key, param, build, lambda loaded: gather_loaded(entry, loaded),
                                replica_id=(int(copy), tp_rank, dp_rank))


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """The default process group dist_checkpointing needs: the caller's, or a private 1-rank gloo one."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _cpu_safe() -> Iterator[None]:
    # On a CPU-only torch, the torch_dist writer's device-to-host step calls torch.cuda.synchronize()
    # and its finalisation allocates a flag on torch.cuda.current_device(); both raise. With no device
    # there is nothing to wait for and the host is the device, so both are redirected for the duration
    # of one save / load and restored afterwards (global CPU patches belong to parallel.cpu_patches).
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.synchronize, torch.cuda.current_device
    torch.cuda.synchronize, torch.cuda.current_device = (lambda *args, **kwargs: None), (lambda: "cpu")
    try:
        yield
    finally:
        torch.cuda.synchronize, torch.cuda.current_device = saved


@contextlib.contextmanager
def _in_process_results() -> Iterator[None]:
    # A synchronous save runs the writer in this process, yet Megatron creates its results queue with a
    # spawned multiprocessing Manager (seconds per call, and it re-imports the caller's __main__). An
    # in-process queue carries the same results here; the module default is restored afterwards.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        yield
        return
    filesystem_async._results_queue = queue.Queue()
    try:
        yield
    finally:
        filesystem_async._results_queue = None


def save_sharded(state: dict[str, ShardedTensor], directory: str) -> None:
    """Synchronous save; collective over the default process group: every rank passes its own shards."""
    with _cpu_safe(), _in_process_results():
        strategy = TorchDistSaveShardedStrategy("torch_dist", 1)
        dist_checkpointing.save(state, directory, sharded_strategy=strategy)


def load_sharded(state: dict[str, ShardedTensor], directory: str) -> dict[str, Tensor]:
    """Collective over the default process group: every rank requests its own shards."""
    with _cpu_safe():
        return dist_checkpointing.load(state, directory, validate_access_integrity=False)
