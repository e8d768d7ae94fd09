"""How one Megatron GPTModel tensor is laid out against its Hugging Face tensors, and split across TP.

Each layout converts in three directions, all pure torch:
- `local_from_hf`: HF tensors -> the shard one TP rank holds, reading only the rows/columns it needs;
- `merge`: the TP shards of every rank (rank order) -> the full Megatron tensor;
- `to_hf`: the full Megatron tensor -> the HF tensors (in the order the mapping table lists them).

Layouts (nq query heads, nkv KV heads, r = nq / nkv, d head dim, f FFN width, V vocab, Vp padded):
- "replicated": same tensor on every rank (RMSNorm weights).
- "row": split along columns (dim 1): o_proj, down_proj (row-parallel linears).
- "vocab": split along rows, padded with zero rows to Vp = multiple of 128 * TP (embeddings, lm_head).
- "qkv": Megatron fuses q, k, v per query group g: rows [q heads g*r..g*r+r-1 | k head g | v head g],
  i.e. W.view(nkv, (r + 2) * d, ...). TP ranks hold whole groups, so the split is contiguous in dim 0.
- "gate_up": fc1 = [gate; up] with silu(first half) * second half; TP rank i holds [gate_i; up_i],
  not a contiguous chunk of the full tensor.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from megatron_codistill.models.arch import ModelArch


class Reader(Protocol):
    """Source of HF tensors: whole shapes and slices along one dim [start, stop)."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, dim: int = 0, start: int | None = None, stop: int | None = None) -> Tensor: ...


class DictReader:
    """A `Reader` over in-memory tensors (a HF state dict, or tensors gathered while streaming)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str, dim: int = 0, start: int | None = None, stop: int | None = None) -> Tensor:
        start = start or 0
        stop = self.shape(name)[dim] if stop is None else stop
        return self.tensors[name].narrow(dim, start, stop - start)


def _chunk(n: int, tp: int, rank: int) -> tuple[int, int]:
    assert n % tp == 0, (n, tp)
    step = n // tp
    return rank * step, (rank + 1) * step


class Replicated:
    tp_axis: int | None = None
    halves = False

    def local_from_hf(self, src: Reader, names, arch: ModelArch, tp_rank: int, tp: int) -> Tensor:
        return src.read(names[0])

    def merge(self, shards: list[Tensor], arch: ModelArch) -> Tensor:
        return shards[0]

    def to_hf(self, full: Tensor, arch: ModelArch) -> list[Tensor]:
        return [full]

    def hf_shapes(self, shape: tuple[int, ...], arch: ModelArch) -> list[tuple[int, ...]]:
        return [shape]


class Row(Replicated):
    tp_axis = 1

    def local_from_hf(self, src: Reader, names, arch: ModelArch, tp_rank: int, tp: int) -> Tensor:
        start, stop = _chunk(src.shape(names[0])[1], tp, tp_rank)
        return src.read(names[0], 1, start, stop)

    def merge(self, shards: list[Tensor], arch: ModelArch) -> Tensor:
        return torch.cat(shards, dim=1)


class Vocab(Replicated):
    tp_axis = 0

    def local_from_hf(self, src: Reader, names, arch: ModelArch, tp_rank: int, tp: int) -> Tensor:
        start, stop = _chunk(arch.padded_vocab_size(tp), tp, tp_rank)
        real = src.read(names[0], 0, min(start, arch.vocab_size), min(stop, arch.vocab_size))
        if real.shape[0] == stop - start:
            return real
        pad = real.new_zeros((stop - start - real.shape[0], *real.shape[1:]))  # padded logits are masked
        return torch.cat([real, pad], dim=0)

    def merge(self, shards: list[Tensor], arch: ModelArch) -> Tensor:
        return torch.cat(shards, dim=0)

    def to_hf(self, full: Tensor, arch: ModelArch) -> list[Tensor]:
        return [full[: arch.vocab_size]]


class FusedQKV(Replicated):
    tp_axis = 0

    def local_from_hf(self, src: Reader, names, arch: ModelArch, tp_rank: int, tp: int) -> Tensor:
        nkv, d = arch.num_key_value_heads, arch.head_dim
        r = arch.num_attention_heads // nkv
        g0, g1 = _chunk(nkv, tp, tp_rank)  # query groups of this rank
        q = src.read(names[0], 0, g0 * r * d, g1 * r * d)
        k = src.read(names[1], 0, g0 * d, g1 * d)
        v = src.read(names[2], 0, g0 * d, g1 * d)
        tail, n = q.shape[1:], g1 - g0
        fused = torch.cat([q.reshape(n, r * d, *tail), k.reshape(n, d, *tail), v.reshape(n, d, *tail)], dim=1)
        return fused.reshape(n * (r + 2) * d, *tail)

    def merge(self, shards: list[Tensor], arch: ModelArch) -> Tensor:
        return torch.cat(shards, dim=0)

    def to_hf(self, full: Tensor, arch: ModelArch) -> list[Tensor]:
        nq, nkv, d = arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
        r, tail = nq // nkv, full.shape[1:]
        q, k, v = full.reshape(nkv, (r + 2) * d, *tail).split([r * d, d, d], dim=1)
        return [q.reshape(nq * d, *tail), k.reshape(nkv * d, *tail), v.reshape(nkv * d, *tail)]

    def hf_shapes(self, shape: tuple[int, ...], arch: ModelArch) -> list[tuple[int, ...]]:
        nq, nkv, d = arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
        return [(nq * d, *shape[1:]), (nkv * d, *shape[1:]), (nkv * d, *shape[1:])]


class GateUp(Replicated):
    tp_axis = 0
    halves = True  # the dist checkpoint stores [gate; up] of the full model: each rank writes two pieces

    def local_from_hf(self, src: Reader, names, arch: ModelArch, tp_rank: int, tp: int) -> Tensor:
        start, stop = _chunk(src.shape(names[0])[0], tp, tp_rank)
        return torch.cat([src.read(names[0], 0, start, stop), src.read(names[1], 0, start, stop)], dim=0)

    def merge(self, shards: list[Tensor], arch: ModelArch) -> Tensor:
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)

    def to_hf(self, full: Tensor, arch: ModelArch) -> list[Tensor]:
        return list(full.chunk(2, dim=0))

    def hf_shapes(self, shape: tuple[int, ...], arch: ModelArch) -> list[tuple[int, ...]]:
        return [(shape[0] // 2, *shape[1:])] * 2


LAYOUTS = {"replicated": Replicated(), "row": Row(), "vocab": Vocab(), "qkv": FusedQKV(), "gate_up": GateUp()}


def get_layout(name: str) -> Replicated:
    """The layout registered under `name`; ValueError listing the valid names otherwise."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown tensor layout {name!r}; valid: {sorted(LAYOUTS)}")
    return LAYOUTS[name]
