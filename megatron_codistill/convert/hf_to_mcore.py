"""Hugging Face safetensors -> Megatron-Core distributed checkpoint, streamed shard by shard.

Peak memory is one copy of the converted weights (dist_checkpointing writes one state dict) plus the
HF shard being read: a HF tensor is dropped as soon as the Megatron tensor it feeds is complete.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.layouts import DictReader
from megatron_codistill.convert.mapping import check_tensor_set, entries, expected_hf_tensors, hf_weights
from megatron_codistill.convert.mcore_ckpt import process_group, save_sharded, sharded_tensors
from megatron_codistill.convert.mcore_meta import checkpoint_meta
from megatron_codistill.convert.output_dir import HF_FILES, atomic_dir, copy_side_files, write_marker
from megatron_codistill.convert.safetensors_io import SafetensorsDir
from megatron_codistill.models.arch import ModelArch

log = logging.getLogger(__name__)


def source_dtype(src: SafetensorsDir, where: str) -> torch.dtype:
    """The one dtype of every tensor in `src` (CheckpointError if they differ)."""
    dtypes = sorted({str(t.dtype) for t in src.tensors.values()})
    if len(dtypes) != 1:
        raise CheckpointError(f"{where}: tensors have several dtypes {dtypes}; choose one with --dtype")
    return src.tensors[next(iter(src.tensors))].dtype


def validate_hf_dir(hf_dir: str, tp: int = 1, pp: int = 1) -> tuple[ModelArch, SafetensorsDir]:
    """Every check on a HF directory, reading headers only: architecture, layout, tensors, shapes."""
    arch = ModelArch.from_hf_config(hf_dir)  # names an unsupported architecture and lists the supported
    arch.validate_layout(tp, pp)
    src = SafetensorsDir(hf_dir)
    check_tensor_set(hf_weights(src.shapes()), expected_hf_tensors(arch), hf_dir)
    return arch, src


def convert_hf_to_mcore(hf_dir: str, out_dir: str, *, tp: int = 1, pp: int = 1,
                        dtype: torch.dtype | None = None, overwrite: bool = False) -> str:
    """Convert a HF Qwen2 / Llama directory into a Megatron distributed checkpoint at `out_dir`.

    The checkpoint loads at any TP/PP; `tp` / `pp` are checked against the model (heads, KV heads and
    FFN width divisible by tp, layers by pp) and recorded as the intended layout. `dtype` None keeps
    the source dtype. Every check runs before anything is written; the output appears atomically.
    Runs in one process (a private 1-rank gloo group if torch.distributed is not initialised).
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        raise CheckpointError("convert_hf_to_mcore runs in a single process; "
                              "call it outside a multi-rank job")
    arch, src = validate_hf_dir(hf_dir, tp, pp)
    dtype = dtype or source_dtype(src, hf_dir)
    wanted = {e.hf: e for e in entries(arch)}
    owner = {name: key for key in wanted for name in key}
    state, pending = {}, {}
    with atomic_dir(out_dir, overwrite) as tmp, process_group():
        for file in src.files:  # shard by shard, in file order
            for name in src.names_in(file):
                if name not in owner:  # an ignored buffer (validated above)
                    continue
                pending[name] = src.read(name)
                key = owner[name]
                if all(n in pending for n in key):
                    entry = wanted[key]
                    local = entry.layout.local_from_hf(DictReader(pending), key, arch, 0, 1).to(dtype)
                    state.update(sharded_tensors(entry, local, num_layers=arch.num_layers, tp_rank=0, tp=1))
                    for n in key:
                        del pending[n]
            src.close(file)
            log.info("read %s (%d Megatron tensors so far)", file, len(state))
        assert not pending, sorted(pending)
        save_sharded(state, tmp)
        os.makedirs(os.path.join(tmp, HF_FILES))
        copy_side_files(hf_dir, os.path.join(tmp, HF_FILES))
        meta = checkpoint_meta(arch, dtype, {"tp": 1, "pp": 1}, intended_layout={"tp": tp, "pp": pp},
                               source=os.path.abspath(hf_dir))
        write_marker(tmp, meta)
    return out_dir
