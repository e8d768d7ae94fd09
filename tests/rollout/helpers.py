"""Tiny random HF causal LMs whose next-token distributions are far from uniform."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config


def tiny_config(arch: str = "qwen2", vocab: int = 16, tie: bool = True, max_pos: int = 64, **kw):
    common = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
        tie_word_embeddings=tie, initializer_range=0.3, pad_token_id=0, eos_token_id=1,
    )
    common.update(kw)
    return Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)


def tiny_model(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(**kw)).eval()


@torch.no_grad()
def next_logits(model: torch.nn.Module, prefix: list[int]) -> torch.Tensor:
    """Logits [V] after `prefix`, from one unpadded, uncached forward."""
    return model(input_ids=torch.tensor([prefix])).logits[0, -1].float()
