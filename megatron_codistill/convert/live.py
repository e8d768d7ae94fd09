"""Checkpoints in and out of a live sharded model: what the trainer calls.

`load_checkpoint_into_model` accepts any initial-weights location a config can name (a Hugging Face
directory, a hub id resolved through the local cache, or a Megatron checkpoint written by
`codistill convert`) and fills this rank's shard. `save_hf_from_model` writes the current weights
of a model in any TP/PP layout as a Hugging Face checkpoint (collective; rank 0 writes, atomically).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil

import torch
import torch.distributed as dist

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.export import export_hf_weights
from megatron_codistill.convert.mapping import entries
from megatron_codistill.convert.mcore_ckpt import FORMAT
from megatron_codistill.convert.model_io import load_hf_into_model, load_mcore_into_model
from megatron_codistill.convert.output_dir import MARKER, atomic_dir, write_marker
from megatron_codistill.convert.safetensors_io import ShardWriter, plan_shards
from megatron_codistill.models.arch import ModelArch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json")


def resolve_location(path: str) -> str:
    """A local directory for `path`: itself if it exists, else a hub id looked up in the HF cache
    (downloaded when the machine is online and HF_HUB_OFFLINE is not set)."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise CheckpointError(f"checkpoint {path!r} is not a directory nor a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                       "*.jinja"])
    except Exception as e:  # noqa: BLE001 - any hub failure is reported the same way
        raise CheckpointError(f"checkpoint {path!r}: not a local directory, and the hub could not provide "
                              f"it ({type(e).__name__}: {e})") from None


def checkpoint_kind(directory: str) -> str:
    """"mcore" for a `codistill convert` Megatron checkpoint, "hf" for a HF safetensors directory."""
    marker = os.path.join(directory, MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f).get("format") == FORMAT:
                return "mcore"
    if any(n.endswith(".safetensors") for n in os.listdir(directory)):
        return "hf"
    raise CheckpointError(f"{directory}: neither a Megatron checkpoint from `codistill convert` nor a Hugging "
                          "Face directory with *.safetensors weights")


def load_checkpoint_into_model(model, arch: ModelArch, path: str, *, tp_group=None) -> None:
    """Fill this rank's GPTModel chunk from `path` (HF dir, hub id or Megatron checkpoint)."""
    directory = resolve_location(path)
    if checkpoint_kind(directory) == "mcore":
        load_mcore_into_model(model, arch, directory, tp_group=tp_group)
    else:
        load_hf_into_model(model, arch, directory, tp_group=tp_group)


def save_hf_from_model(model, arch: ModelArch, out_dir: str, *, tp_group=None, pp_group=None,
                       tokenizer_dir: str | None = None, dtype: torch.dtype | None = None,
                       max_shard_bytes: int = 5 << 30) -> None:
    """Write the model's full weights as a HF checkpoint in `out_dir` (replacing one that is there).

    Collective over the model's TP and PP groups (every rank iterates the export); the global rank 0
    writes. Adds config.json and the tokenizer files found in `tokenizer_dir`.
    """
    writes = not dist.is_initialized() or dist.get_rank() == 0
    buckets = export_hf_weights(model, arch, tp_group=tp_group, pp_group=pp_group, bucket_bytes=256 << 20,
                                dtype=dtype)
    if not writes:
        for _ in buckets:
            pass
        return
    todo = entries(arch)
    first = next(iter(buckets), [])
    item = (dtype or (first[0][1].dtype if first else torch.float32)).itemsize
    sizes = [(n, math.prod(s) * item) for e in todo for n, s in zip(e.hf, e.hf_shapes)]
    with atomic_dir(out_dir, overwrite=True) as tmp:
        writer = ShardWriter(tmp, plan_shards(sizes, max_shard_bytes))
        for bucket in itertools.chain([first], buckets):
            for name, tensor in bucket:
                writer.add(name, tensor.detach().clone())
        writer.finish()
        config = arch.to_hf_config()
        config.torch_dtype = str(dtype or first[0][1].dtype).removeprefix("torch.") if first else "float32"
        config.save_pretrained(tmp)
        if tokenizer_dir and os.path.isdir(tokenizer_dir):
            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(tokenizer_dir, name)):
                    shutil.copy2(os.path.join(tokenizer_dir, name), tmp)
        write_marker(tmp, {"format": "hf-safetensors", "source": "live model"})
