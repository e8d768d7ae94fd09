"""Atomic checkpoint directories: written under a temporary name, a marker last, then renamed.

An interrupted conversion leaves only a hidden `.NAME.tmp-*` directory, never a directory that looks
complete; readers require the marker (`codistill_convert.json`, which also holds the metadata).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from megatron_codistill.convert.errors import CheckpointError

MARKER = "codistill_convert.json"
HF_FILES = "hf_files"  # inside a Megatron checkpoint: the HF config, generation config, tokenizer
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".distcp", ".h5", ".msgpack", ".gguf")
_WEIGHT_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", ".metadata", "common.pt",
                 "metadata.json", MARKER)


def _looks_like_checkpoint(path: str) -> bool:
    names = os.listdir(path)
    return any(n.endswith(_WEIGHT_SUFFIXES) or n in _WEIGHT_FILES or n == "config.json" for n in names)


def check_output_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse a non-empty `out_dir` unless `overwrite` (and then only if it holds a checkpoint)."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise CheckpointError(f"output {out_dir!r} exists and is not a directory")
    names = sorted(os.listdir(out_dir))
    if not names:
        return
    if not overwrite:
        raise CheckpointError(f"output directory {out_dir!r} already holds files ({', '.join(names[:5])}"
                              f"{', ...' if len(names) > 5 else ''}); pass --overwrite to replace it")
    if not _looks_like_checkpoint(out_dir):
        raise CheckpointError(f"output directory {out_dir!r} does not hold a checkpoint "
                              f"({', '.join(names[:5])}); refusing to delete it even with --overwrite: "
                              "choose another --out")


def begin(out_dir: str, overwrite: bool = False) -> str:
    """Check `out_dir`, then create and return a temporary directory beside it."""
    check_output_dir(out_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-", dir=parent)


def commit(tmp: str, out_dir: str) -> None:
    """Move the finished `tmp` (its marker written) to `out_dir`, replacing what was there."""
    if not os.path.isfile(os.path.join(tmp, MARKER)):
        raise RuntimeError(f"internal error: {tmp} was finished without its {MARKER}")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if os.path.exists(out_dir):  # --overwrite: swap, then delete the old one
        old = tmp + "-old"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def abort(tmp: str) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(out_dir: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory beside `out_dir`; on success it replaces `out_dir`, on error it goes."""
    tmp = begin(out_dir, overwrite)
    try:
        yield tmp
        commit(tmp, out_dir)
    except BaseException:
        abort(tmp)
        raise


def write_marker(directory: str, meta: dict) -> None:
    """Write the completion marker (with metadata) last, durably."""
    path = os.path.join(directory, MARKER)
    with open(path, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def read_marker(directory: str) -> dict:
    """The metadata of a complete checkpoint; CheckpointError when the marker is absent."""
    path = os.path.join(directory, MARKER)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.isdir(directory) else f"has no {MARKER}"
        raise CheckpointError(f"{directory!r} {what}: not a complete checkpoint written by "
                              "`codistill convert` (an interrupted conversion leaves none)")
    with open(path) as f:
        return json.load(f)


def copy_side_files(src: str, dst: str) -> list[str]:
    """Copy the top-level non-weight files of a HF directory (config, generation config, tokenizer,
    chat template, license, ...). Returns the names copied."""
    copied = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and not name.endswith(_WEIGHT_SUFFIXES) and name not in _WEIGHT_FILES:
            shutil.copy2(path, os.path.join(dst, name))
            copied.append(name)
    return copied
