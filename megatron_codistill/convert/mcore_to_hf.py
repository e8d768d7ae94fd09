"""Megatron-Core distributed checkpoint -> Hugging Face sharded safetensors, one layer at a time.

Peak memory is about one layer: each layer's tensors are read from the checkpoint, split into HF
tensors and appended to their safetensors file at once (headers are written first, from the shapes).
"""

from __future__ import annotations

import json
import math
import os
from itertools import groupby

import torch
import torch.distributed as dist

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.mapping import entries
from megatron_codistill.convert.mcore_ckpt import gather_loaded, load_sharded, process_group, sharded_tensors
from megatron_codistill.convert.mcore_meta import (
    arch_difference,
    arch_from_meta,
    check_checkpoint_tensors,
    check_storage,
)
from megatron_codistill.convert.output_dir import HF_FILES, atomic_dir, copy_side_files, read_marker, write_marker
from megatron_codistill.convert.safetensors_io import ShardWriter, plan_shards
from megatron_codistill.models.arch import ModelArch


def _hf_config(mcore_dir: str, arch: ModelArch, dtype: torch.dtype) -> dict:
    """config.json for the output: the source's own (checked against the checkpoint) or from `arch`."""
    path = os.path.join(mcore_dir, HF_FILES, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            cfg = json.load(f)
        diff = arch_difference(ModelArch.from_hf_config(cfg), arch)
        if diff:
            raise CheckpointError(f"{path} disagrees with the checkpoint's architecture: {diff}")
    else:
        cfg = arch.to_hf_config().to_dict()
    cfg["dtype" if "dtype" in cfg else "torch_dtype"] = str(dtype).removeprefix("torch.")
    return cfg


def validate_mcore_dir(mcore_dir: str) -> tuple[ModelArch, torch.dtype]:
    """Every check on a Megatron checkpoint, reading metadata only: marker, architecture, files, tensors."""
    arch, dtype = arch_from_meta(read_marker(mcore_dir), mcore_dir)
    check_storage(mcore_dir)
    check_checkpoint_tensors(mcore_dir, arch)
    return arch, dtype


def convert_mcore_to_hf(mcore_dir: str, out_dir: str, *, overwrite: bool = False,
                        max_shard_bytes: int = 5 * 10**9) -> str:
    """Convert a checkpoint written by `convert_hf_to_mcore` or `save_mcore_checkpoint` into a HF
    directory: sharded safetensors (+ index), config.json, and the generation config, tokenizer and
    other files of the original HF directory when the checkpoint carries them."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        raise CheckpointError("convert_mcore_to_hf runs in a single process; "
                              "call it outside a multi-rank job")
    arch, dtype = validate_mcore_dir(mcore_dir)
    config = _hf_config(mcore_dir, arch, dtype)
    todo = entries(arch)
    specs = {n: (s, dtype) for e in todo for n, s in zip(e.hf, e.hf_shapes)}
    sizes = [(n, math.prod(s) * dtype.itemsize) for n, (s, _) in specs.items()]
    with atomic_dir(out_dir, overwrite) as tmp, process_group():
        writer = ShardWriter(tmp, plan_shards(sizes, max_shard_bytes), specs)
        for _, group in groupby(todo, key=lambda e: e.layer):
            group = list(group)
            state = {}
            for e in group:
                state.update(sharded_tensors(e, torch.empty(e.shape, dtype=dtype), num_layers=arch.num_layers,
                                             tp_rank=0, tp=1))
            loaded = load_sharded(state, mcore_dir)
            for e in group:
                for name, tensor in zip(e.hf, e.layout.to_hf(gather_loaded(e, loaded), arch)):
                    writer.add(name, tensor)
        writer.finish()
        side = os.path.join(mcore_dir, HF_FILES)
        if os.path.isdir(side):
            copy_side_files(side, tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        write_marker(tmp, {"format": "hf-safetensors", "source": os.path.abspath(mcore_dir),
                           "dtype": str(dtype).removeprefix("torch.")})
    return out_dir
