"""Sharded safetensors in (validated from headers before any data is read) and out.

File format: 8-byte little-endian header length n, n bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}}, then the tensor bytes; a file is complete iff its size is 8 + n + the
largest end offset. Sharded checkpoints list name -> file in `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from megatron_codistill.convert.errors import CheckpointError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_header(path: str) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of one safetensors file; CheckpointError if truncated or corrupt."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file (header length {n}, "
                                  f"file size {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    out, end = {}, 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = DTYPES[meta["dtype"]], tuple(meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {meta}") from None
        if stop - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {list(shape)} {meta['dtype']} spans "
                                  f"{stop - begin} bytes, expected {math.prod(shape) * dtype.itemsize}")
        out[name], end = TensorInfo(os.path.basename(path), dtype, shape), max(end, stop)
    if size != 8 + n + end:
        kind = "truncated" if size < 8 + n + end else "corrupt (trailing bytes)"
        raise CheckpointError(f"{path}: {kind} safetensors file: {size} bytes, "
                              f"its header describes {8 + n + end}")
    return out


class SafetensorsDir:
    """The weights of a HF model directory: one `model.safetensors` or shards listed by an index.

    Every header is checked on construction; tensors are read lazily, sliced along one dim.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        index = os.path.join(path, INDEX)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map: dict[str, str] = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a safetensors index ({err!r})") from None
            self.files = list(dict.fromkeys(weight_map.values()))
        elif os.path.isfile(os.path.join(path, SINGLE)):
            weight_map, self.files = None, [SINGLE]
        else:
            raise CheckpointError(f"{path}: no {INDEX} or {SINGLE} (only safetensors checkpoints are read)")
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            full = os.path.join(path, file)
            if not os.path.isfile(full):
                raise CheckpointError(f"{index}: lists shard {file!r}, which does not exist")
            self.tensors.update(read_header(full))
        if weight_map is not None:
            lost = sorted(n for n, f in weight_map.items()
                          if n not in self.tensors or self.tensors[n].file != f)
            extra = sorted(set(self.tensors) - set(weight_map))
            if lost or extra:
                raise CheckpointError(f"{index}: index and shard headers disagree: listed but not in their "
                                      f"shard {lost}; in shards but not listed {extra}")
        self._open: dict[str, object] = {}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}

    def names_in(self, file: str) -> list[str]:
        return [n for n, t in self.tensors.items() if t.file == file]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def read(self, name: str, dim: int = 0, start: int | None = None, stop: int | None = None) -> Tensor:
        """Tensor `name` (a copy), restricted to [start, stop) along `dim` (0 or 1)."""
        file = self.tensors[name].file
        if file not in self._open:
            self._open[file] = safe_open(os.path.join(self.path, file), framework="pt")
        handle = self._open[file]
        if start is None and stop is None:
            return handle.get_tensor(name)
        view = handle.get_slice(name)
        return view[start:stop] if dim == 0 else view[:, start:stop]

    def close(self, file: str | None = None) -> None:
        """Drop the mapping of one file (or all), releasing its pages."""
        for f in [file] if file else list(self._open):
            self._open.pop(f, None)


def _own(t: Tensor) -> Tensor:
    """A contiguous tensor owning exactly its storage (safetensors refuses shared storage)."""
    t = t.detach().contiguous()
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Group names (in order) into shards of at most `max_shard_bytes` (a bigger tensor goes alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


class _StreamedShard:
    """One safetensors file written tensor by tensor: the header (all shapes known) goes first."""

    def __init__(self, path: str, names: list[str], specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in names:
            shape, dtype = specs[name]
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.todo, self.specs = list(reversed(names)), specs

    def write(self, name: str, tensor: Tensor) -> bool:
        """Append `name` (must be the next planned tensor); True when the file is complete."""
        assert self.todo and self.todo[-1] == name, f"{name!r} arrived out of order (next: {self.todo[-1:]})"
        shape, dtype = self.specs[self.todo.pop()]
        assert tuple(tensor.shape) == tuple(shape) and tensor.dtype == dtype, (name, tensor.shape, tensor.dtype)
        self.file.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        if self.todo:
            return False
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return True


class ShardWriter:
    """Writes tensors into planned shards as they arrive, then the index json.

    With `specs` (name -> (shape, dtype)) each shard is streamed to disk tensor by tensor (tensors
    must arrive in plan order; memory: one tensor); without, a shard is held until it is complete.
    """

    def __init__(self, out_dir: str, shards: list[list[str]],
                 specs: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None) -> None:
        self.out_dir, self.shards, self.specs = out_dir, shards, specs
        self.shard_of = {n: k for k, names in enumerate(shards) for n in names}
        self.file_of = {n: self._name(k) for n, k in self.shard_of.items()}
        self.pending: list[dict[str, Tensor]] = [{} for _ in shards]
        self.streams: dict[int, _StreamedShard] = {}
        self.done: set[int] = set()
        self.total_bytes = 0

    def _name(self, k: int) -> str:
        n = len(self.shards)
        return SINGLE if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"

    def add(self, name: str, tensor: Tensor) -> None:
        k = self.shard_of[name]
        self.total_bytes += tensor.numel() * tensor.element_size()
        if self.specs is not None:
            if k not in self.streams:
                self.streams[k] = _StreamedShard(os.path.join(self.out_dir, self._name(k)), self.shards[k],
                                                 self.specs)
            if self.streams[k].write(name, tensor):
                self.done.add(k)
                del self.streams[k]
            return
        self.pending[k][name] = _own(tensor)
        if len(self.pending[k]) == len(self.shards[k]):
            ordered = {n: self.pending[k][n] for n in self.shards[k]}
            save_file(ordered, os.path.join(self.out_dir, self._name(k)), metadata={"format": "pt"})
            self.pending[k] = {}
            self.done.add(k)

    def finish(self) -> None:
        left = [n for k, names in enumerate(self.shards) if k not in self.done for n in names]
        assert not left, f"shards not written, waiting for tensors: {left[:5]}"
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": self.file_of}
            with open(os.path.join(self.out_dir, INDEX), "w") as f:
                json.dump(index, f, indent=2)
