"""What a Megatron checkpoint written by this package records and holds, checked before any read.

The marker (`codistill_convert.json`, written last) records the architecture, the weights dtype and
the layout the checkpoint was saved from; the torch_dist metadata lists every tensor's global shape
and where its bytes are. Both are compared with what the model needs before any tensor is read.
"""

from __future__ import annotations

import dataclasses
import os

import megatron.core
import torch
from megatron.core import dist_checkpointing

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.mapping import Shape, entries
from megatron_codistill.convert.mcore_ckpt import FORMAT
from megatron_codistill.models.arch import ModelArch


def tensor_shapes(directory: str) -> dict[str, tuple[Shape, torch.dtype]]:
    """Sharded key -> (global shape, dtype) of every tensor in a torch_dist checkpoint."""
    try:
        meta = dist_checkpointing.load_tensors_metadata(directory)
    except Exception as err:  # noqa: BLE001 - any unreadable metadata is a corrupt checkpoint
        raise CheckpointError(f"{directory}: unreadable Megatron checkpoint metadata ({err})") from None
    return {k: (tuple(t.global_shape), t.dtype) for k, t in meta.items()}


def check_storage(directory: str) -> None:
    """CheckpointError if a data file is missing or shorter than the metadata says (truncated)."""
    from torch.distributed.checkpoint import FileSystemReader

    need: dict[str, int] = {}
    for info in FileSystemReader(directory).read_metadata().storage_data.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        path = os.path.join(directory, name)
        found = os.path.getsize(path) if os.path.isfile(path) else None
        if found is None or found < size:
            raise CheckpointError(f"{path}: {'missing' if found is None else f'truncated ({found} bytes)'}; "
                                  f"the checkpoint metadata needs {size} bytes")


def check_checkpoint_tensors(directory: str, arch: ModelArch) -> dict[str, torch.dtype]:
    """Compare the checkpoint's tensors with those `arch` needs; returns key -> dtype.

    Vocab tensors may hold any number of padding rows beyond `arch.vocab_size`; optimizer state and
    Transformer Engine extra state are ignored.
    """
    found = {k: v for k, v in tensor_shapes(directory).items() if not k.startswith("optimizer.")}
    expected: dict[str, Shape] = {}
    for e in entries(arch):
        expected[e.ckpt] = (arch.num_layers, *e.shape) if e.layer is not None else e.shape
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: tensors do not match the model config: missing {missing}; "
                              f"unexpected {unexpected}")
    wrong = []
    for key, shape in expected.items():
        have = found[key][0]
        vocab_ok = key.endswith(("word_embeddings.weight", "output_layer.weight")) and \
            have[1:] == shape[1:] and have[0] >= shape[0]
        if have != shape and not vocab_ok:
            wrong.append(f"{key}: expected {list(shape)}, found {list(have)}")
    if wrong:
        raise CheckpointError(f"{directory}: shape mismatch: " + "; ".join(wrong))
    return {k: found[k][1] for k in expected}


def checkpoint_meta(arch: ModelArch, dtype: torch.dtype, saved_from: dict, **extra) -> dict:
    """The marker contents of a Megatron checkpoint: architecture, dtype, the layout it was saved from."""
    return {"format": FORMAT, "arch": dataclasses.asdict(arch), "dtype": str(dtype).removeprefix("torch."),
            "saved_from": saved_from, "megatron_core": megatron.core.__version__, **extra}


def arch_from_meta(meta: dict, where: str) -> tuple[ModelArch, torch.dtype]:
    """(architecture, dtype) recorded in a checkpoint marker."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {meta.get('format')!r} is not {FORMAT!r} "
                              "(is this a Hugging Face directory? use hf-to-mcore)")
    return ModelArch(**meta["arch"]), getattr(torch, meta["dtype"])


def arch_difference(a: ModelArch, b: ModelArch) -> list[str]:
    """Fields where two architectures differ, as 'field: a != b'."""
    return [f"{f.name}: {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
            for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
