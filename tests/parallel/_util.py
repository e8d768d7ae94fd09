"""Shared pieces of the parallel/models tests: tiny architectures, an in-process single-rank
setup, and copying a TP=1/PP=1 Megatron model's weights into any TP x PP shard."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from megatron_codistill.models.arch import ModelArch


def tiny_arch(**changes) -> ModelArch:
    """2 layers, hidden 32, 4 heads / 2 KV heads, vocab 300 (padded: 384 at TP=1, 512 at TP=2)."""
    fields = dict(family="qwen2", hidden_size=32, num_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, ffn_hidden_size=64, vocab_size=300,
                  max_position_embeddings=64, rope_theta=10000.0)
    fields.update(changes)
    return ModelArch(**fields)


@contextlib.contextmanager
def single_rank():
    """torch.distributed with one gloo rank in this process (torn down afterwards if we made it)."""
    from megatron_codistill.parallel.layout import build_layouts, init_distributed

    created = not dist.is_initialized()
    saved_env = dict(os.environ)
    init_distributed()
    try:
        yield build_layouts(tp=1, pp=1)
    finally:
        if created:
            dist.destroy_process_group()
            os.environ.clear()
            os.environ.update(saved_env)


@torch.no_grad()
def randomize_(model, std: float = 0.3, seed: int = 0) -> None:
    """Larger-than-init weights (norm weights around 1) so logits are far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.1 * noise if "norm" in name else std * noise)


def _full_name(name: str, layer_offset: int, full_names: set[str]) -> str:
    parts = name.split(".")
    if name.startswith("decoder.layers."):
        parts[2] = str(int(parts[2]) + layer_offset)
    name = ".".join(parts)
    if name == "output_layer.weight" and name not in full_names:  # tied embeddings
        name = "embedding.word_embeddings.weight"
    return name


@torch.no_grad()
def copy_from_full(shard, full, arch: ModelArch, layout) -> None:
    """Give `shard` (this rank's TP x PP piece) the weights of `full` (TP=1, PP=1, same arch)."""
    full_params = dict(full.named_parameters())
    offset = layout.pp_rank * (arch.num_layers // layout.pp)
    tp, rank = layout.tp, layout.tp_rank
    for name, p in shard.named_parameters():
        w = full_params[_full_name(name, offset, set(full_params))]
        if "word_embeddings" in name or name.startswith("output_layer"):
            padded = torch.zeros(arch.padded_vocab_size(tp), w.shape[1])
            padded[: arch.vocab_size] = w[: arch.vocab_size]
            w = padded.chunk(tp, dim=0)[rank]
        elif name.endswith("linear_fc1.weight"):  # SwiGLU: rank i holds [gate_i; up_i]
            gate, up = w.chunk(2, dim=0)
            w = torch.cat([gate.chunk(tp, 0)[rank], up.chunk(tp, 0)[rank]])
        elif getattr(p, "tensor_model_parallel", False):
            w = w.chunk(tp, dim=p.partition_dim)[rank]
        assert w.shape == p.shape, (name, tuple(w.shape), tuple(p.shape))
        p.copy_(w)


def full_slice(full_tensor: torch.Tensor, name: str, p, arch: ModelArch, layout) -> torch.Tensor:
    """The part of a TP=1 tensor (param or grad) that corresponds to shard param `p`."""
    tp, rank = layout.tp, layout.tp_rank
    if "word_embeddings" in name or name.startswith("output_layer"):
        padded = torch.zeros(arch.padded_vocab_size(tp), full_tensor.shape[1])
        padded[: arch.vocab_size] = full_tensor[: arch.vocab_size]
        return padded.chunk(tp, dim=0)[rank]
    if name.endswith("linear_fc1.weight"):
        gate, up = full_tensor.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, 0)[rank], up.chunk(tp, 0)[rank]])
    if getattr(p, "tensor_model_parallel", False):
        return full_tensor.chunk(tp, dim=p.partition_dim)[rank]
    return full_tensor


def reference_logprobs(full, tokens: torch.Tensor, vocab_size: int):
    """(logprobs, entropy) [B, T-1] of a TP=1 Megatron model with plain torch.log_softmax."""
    inputs = tokens[:, :-1]
    pos = torch.arange(inputs.shape[1]).unsqueeze(0).expand_as(inputs)
    logits = full(inputs, pos, None)[..., :vocab_size].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
