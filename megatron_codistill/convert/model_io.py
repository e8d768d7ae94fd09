"""Fill a live (sharded) GPTModel from a HF directory or a Megatron checkpoint, and save one.

Each rank passes its own model chunk; tensor-parallel rank and size come from `tp_group` (None:
TP = 1), the global layer indices of a PP stage from the model's own `layer_number`s. A rank reads
only its own tensors (and, for HF, only its rows / columns of them).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.mapping import (
    Entry,
    check_tensor_set,
    entries,
    entry_for_param,
    expected_hf_tensors,
    hf_weights,
    mcore_shape,
)
from megatron_codistill.convert.mcore_ckpt import (
    gather_loaded,
    load_sharded,
    process_group,
    save_sharded,
    sharded_tensors,
)
from megatron_codistill.convert.mcore_meta import (
    arch_difference,
    arch_from_meta,
    check_checkpoint_tensors,
    check_storage,
    checkpoint_meta,
)
from megatron_codistill.convert.output_dir import (
    HF_FILES,
    abort,
    begin,
    commit,
    copy_side_files,
    read_marker,
    write_marker,
)
from megatron_codistill.convert.safetensors_io import SafetensorsDir
from megatron_codistill.models.arch import ModelArch


def unwrap_model(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def group_rank_size(group) -> tuple[int, int]:
    """(rank, size) in `group`; None means a group of one."""
    return (0, 1) if group is None else (dist.get_rank(group), dist.get_world_size(group))


def layer_offset(model) -> int:
    """Global index of the first transformer layer of this PP stage."""
    layers = unwrap_model(model).decoder.layers
    return layers[0].layer_number - 1 if len(layers) else 0


def local_entries(model, arch: ModelArch, tp: int) -> list[tuple[Tensor, Entry]]:
    """(parameter, entry) for every parameter of this model chunk, checked against `arch`.

    Raises CheckpointError for parameters the table does not know, tensors `arch` implies but the
    model lacks, and shapes that differ from `arch` at this TP size (all before any write).
    """
    model = unwrap_model(model)
    offset = layer_offset(model)
    pairs = [(p, entry_for_param(arch, name, offset)) for name, p in model.named_parameters()]
    layers = range(offset, offset + len(model.decoder.layers))
    want = {e.mcore for e in entries(arch, layers, pre=model.pre_process, post=model.post_process,
                                     exported_only=False)}
    have = {e.mcore for _, e in pairs}
    if want != have:
        raise CheckpointError(f"model chunk does not match the architecture {arch.family!r}: missing "
                              f"{sorted(want - have)}; unexpected {sorted(have - want)}")
    wrong = [f"{e.mcore}: expected {list(mcore_shape(e, arch, tp, local=True))}, found {list(p.shape)}"
             for p, e in pairs if tuple(p.shape) != mcore_shape(e, arch, tp, local=True)]
    if wrong:
        raise CheckpointError(f"shape mismatch between model (TP={tp}) and architecture: " + "; ".join(wrong))
    return pairs


@torch.no_grad()
def load_hf_into_model(model, arch: ModelArch, hf_dir: str, *, tp_group=None) -> None:
    """Copy the weights of a HF safetensors directory into this rank's GPTModel chunk.

    Local per rank (no collective). Padded vocab rows are set to zero. Checks before any copy: the
    directory's config.json equals `arch`, its tensors and shapes are those `arch` implies, and the
    model chunk matches `arch`.
    """
    tp_rank, tp = group_rank_size(tp_group)
    if os.path.isfile(os.path.join(hf_dir, "config.json")):
        diff = arch_difference(ModelArch.from_hf_config(hf_dir), arch)
        if diff:
            raise CheckpointError(f"{hf_dir}/config.json does not describe the model being loaded: {diff}")
    src = SafetensorsDir(hf_dir)
    check_tensor_set(hf_weights(src.shapes()), expected_hf_tensors(arch), hf_dir)
    for param, entry in local_entries(model, arch, tp):
        param.copy_(entry.layout.local_from_hf(src, entry.hf, arch, tp_rank, tp))
    src.close()


def agree(error: str | None, group=None) -> None:
    """Raise on every rank of `group` (default: all) if any rank found an error: a rank that raised
    alone would leave the others waiting in the next collective."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        errors = [None] * dist.get_world_size(group)
        dist.all_gather_object(errors, error, group=group)
        error = "; ".join(dict.fromkeys(e for e in errors if e)) or None
    if error:
        raise CheckpointError(error)


def _check_mcore(ckpt_dir: str, arch: ModelArch) -> dict:
    meta = read_marker(ckpt_dir)
    ckpt_arch, _ = arch_from_meta(meta, ckpt_dir)
    diff = arch_difference(ckpt_arch, arch)
    if diff:
        raise CheckpointError(f"{ckpt_dir} holds another architecture than the model being loaded: {diff}")
    check_storage(ckpt_dir)
    check_checkpoint_tensors(ckpt_dir, arch)
    return meta


@torch.no_grad()
def load_mcore_into_model(model, arch: ModelArch, ckpt_dir: str, *, tp_group=None) -> None:
    """Load a Megatron checkpoint (saved at any TP/PP) into this rank's GPTModel chunk.

    Collective over the default process group (torch.distributed.checkpoint plans the reads
    together): every rank of the job must call it, each with its own chunk. Each rank reads only
    the slices of its own parameters; padded vocab rows are zero.
    """
    tp_rank, tp = group_rank_size(tp_group)
    try:
        _check_mcore(ckpt_dir, arch)
        pairs, error = local_entries(model, arch, tp), None
    except CheckpointError as err:
        error = str(err)
    agree(error)
    state = {}
    for param, entry in pairs:  # loaded in place into the parameters' storage
        state.update(sharded_tensors(entry, param.detach(), num_layers=arch.num_layers,
                                     tp_rank=tp_rank, tp=tp))
    with process_group():
        loaded = load_sharded(state, ckpt_dir)
    for param, entry in pairs:
        tensor = gather_loaded(entry, loaded)
        if tensor.data_ptr() != param.data_ptr():
            param.copy_(tensor)


@torch.no_grad()
def save_mcore_checkpoint(model, arch: ModelArch, out_dir: str, *, tp_group=None, pp_group=None,
                          dp_group=None, hf_files: str | None = None, overwrite: bool = False) -> str:
    """Save every rank's model chunk as one Megatron checkpoint, loadable at any TP/PP.

    Collective over the default process group: every rank of the job calls it (the model group's
    DP replicas write nothing twice). Needs a filesystem shared by the ranks. `hf_files`: a HF
    directory whose config, generation config and tokenizer travel with the checkpoint. The
    directory appears atomically (rank 0 renames it after every rank has written).
    """
    tp_rank, tp = group_rank_size(tp_group)
    dp_rank, dp = group_rank_size(dp_group)
    dtype = unwrap_model(model).config.params_dtype
    rank = dist.get_rank() if dist.is_initialized() else 0
    with process_group():
        tmp, error = None, None
        try:
            pairs = [(p, e) for p, e in local_entries(model, arch, tp) if e.rule.exported]
            if rank == 0:
                tmp = begin(out_dir, overwrite)
        except CheckpointError as err:
            error = str(err)
        try:
            agree(error)
        except CheckpointError:
            if tmp is not None:
                abort(tmp)
            raise
        box = [tmp]
        dist.broadcast_object_list(box, src=0)  # every rank writes into rank 0's temporary directory
        tmp = box[0]
        try:
            state = {}
            for param, entry in pairs:
                state.update(sharded_tensors(entry, param.detach(), num_layers=arch.num_layers,
                                             tp_rank=tp_rank, tp=tp, dp_rank=dp_rank))
            save_sharded(state, tmp)
            dist.barrier()
            if rank == 0:
                if hf_files is not None:
                    os.makedirs(os.path.join(tmp, HF_FILES))
                    copy_side_files(hf_files, os.path.join(tmp, HF_FILES))
                saved_from = {"tp": tp, "pp": group_rank_size(pp_group)[1], "dp": dp}
                write_marker(tmp, checkpoint_meta(arch, dtype, saved_from))
                commit(tmp, out_dir)
        except BaseException:
            if rank == 0:
                abort(tmp)
            raise
        dist.barrier()
    return out_dir
