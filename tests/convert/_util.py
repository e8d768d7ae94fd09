"""Tiny random HF Qwen2 / Llama checkpoints (built by transformers, saved with save_pretrained) and
the logits of HF and of a Megatron model at any TP x PP on the same tokens."""

from __future__ import annotations

import glob
import os

import torch
import torch.distributed as dist

VOCAB = 300  # padded: 384 at TP=1, 512 at TP=2
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def hf_config(family: str, *, tie: bool = False, rope_scaling: dict | None = None, kv_heads: int = 2,
              heads: int = 4, vocab: int = VOCAB, layers: int = 2):
    """GQA ratio heads / kv_heads (2 by default), head_dim 16, vocab needing padding."""
    from transformers import LlamaConfig, Qwen2Config

    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=tie,
              max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    theta = 1e6 if family == "qwen2" else 5e5
    rope = {"rope_type": "default", "rope_theta": theta}
    if rope_scaling:
        rope = {**rope_scaling, "rope_theta": theta}
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[family]
    return cls(**kw, rope_parameters=rope)


def make_hf_model(config, seed: int = 0):
    """A random HF model with weights far from init (norms near 1, biases non-zero), fp32, eval."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)
    return model


def save_tokenizer(path: str, vocab: int = VOCAB) -> None:
    """A word-level tokenizer over `vocab` ids, saved as HF tokenizer files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def save_hf(model, path: str, *, max_shard_size: str = "40KB", dtype: torch.dtype | None = None) -> str:
    """save_pretrained with small shards (an index json), plus a tokenizer and generation config."""
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    save_tokenizer(path, model.config.vocab_size)
    return path


def hf_state(path: str) -> dict[str, torch.Tensor]:
    """Every tensor in the safetensors files of a directory."""
    from safetensors.torch import load_file

    out = {}
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        out.update(load_file(file))
    return out


def tokens(batch: int = 2, seq: int = 48, vocab: int = VOCAB, seed: int = 11) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_logits(path: str, toks: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits of the HF checkpoint at `path` (fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model(toks).logits.float()


@torch.no_grad()
def megatron_logits(model, layout, toks: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, T, vocab] logits of a Megatron model chunk at any TP x PP (on every rank).

    Stages run in order, hidden states go stage to stage with send/recv; the last stage gathers
    the vocab-parallel logits over TP and broadcasts them back over the pipeline.
    """
    pos = torch.arange(toks.shape[1]).unsqueeze(0).expand_as(toks)
    hidden_shape = (toks.shape[1], toks.shape[0], model.config.hidden_size)  # [T, B, h]
    if not layout.is_first_stage:
        hidden = torch.empty(hidden_shape)
        dist.recv(hidden, src=layout.pp_ranks[layout.pp_rank - 1])
        model.set_input_tensor(hidden)
    out = model(toks, pos, None)
    if not layout.is_last_stage:
        dist.send(out.contiguous(), dst=layout.pp_ranks[layout.pp_rank + 1])
        logits = torch.empty(toks.shape[0], toks.shape[1], vocab)
    else:
        parts = [torch.empty_like(out) for _ in range(layout.tp)]
        dist.all_gather(parts, out.contiguous(), group=layout.tp_group)
        logits = torch.cat(parts, dim=-1)[..., :vocab].contiguous()
    if layout.pp > 1:
        dist.broadcast(logits, src=layout.last_stage_rank, group=layout.pp_group)
    return logits
