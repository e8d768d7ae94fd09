"""Provider: a Megatron GPTModel built from ModelArch computes the same logits as the HF model
(Qwen2 with QKV bias and tied embeddings; Llama with GQA, llama3 RoPE scaling, explicit head_dim),
given the same weights; config fields; spec choice; TE/FP8 errors."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from megatron_codistill.models.arch import ModelArch
from megatron_codistill.models.provider import build_gpt_model, layer_spec, te_available, transformer_config

COMMON = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=200)
CASES = {
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "llama": (LlamaForCausalLM, LlamaConfig(**COMMON, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                            max_position_embeddings=16384,
                                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0, "rope_theta": 1e4,
                                                          "original_max_position_embeddings": 8192})),
}


def _fuse_qkv(q, k, v, heads, kv_heads, d):
    """Megatron's fused QKV rows: per KV group g, [its heads/kv_heads query heads | k_g | v_g]."""
    r, tail = heads // kv_heads, q.shape[1:]
    return torch.cat([q.reshape(kv_heads, r * d, *tail), k.reshape(kv_heads, d, *tail),
                      v.reshape(kv_heads, d, *tail)], dim=1).reshape(-1, *tail)


def _hf_to_megatron(hf_sd: dict, arch: ModelArch) -> dict:
    """TP=1 state dict of the provider's GPTModel (local spec) from HF Qwen2/Llama tensors."""
    def padded(w):
        out = torch.zeros(arch.padded_vocab_size(1), w.shape[1])
        out[: w.shape[0]] = w
        return out

    h, d = arch.num_attention_heads, arch.head_dim
    sd = {"embedding.word_embeddings.weight": padded(hf_sd["model.embed_tokens.weight"]),
          "decoder.final_layernorm.weight": hf_sd["model.norm.weight"]}
    if not arch.tie_word_embeddings:
        sd["output_layer.weight"] = padded(hf_sd["lm_head.weight"])
    for i in range(arch.num_layers):
        a, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        sd[m + "input_layernorm.weight"] = hf_sd[a + "input_layernorm.weight"]
        sd[m + "pre_mlp_layernorm.weight"] = hf_sd[a + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias") if arch.qkv_bias else ("weight",):
            q, k, v = (hf_sd[f"{a}self_attn.{p}_proj.{kind}"] for p in "qkv")
            sd[f"{m}self_attention.linear_qkv.{kind}"] = _fuse_qkv(q, k, v, h, arch.num_key_value_heads, d)
        sd[m + "self_attention.linear_proj.weight"] = hf_sd[a + "self_attn.o_proj.weight"]
        gate, up = hf_sd[a + "mlp.gate_proj.weight"], hf_sd[a + "mlp.up_proj.weight"]
        sd[m + "mlp.linear_fc1.weight"] = torch.cat([gate, up])  # SwiGLU: silu(first half) * second
        sd[m + "mlp.linear_fc2.weight"] = hf_sd[a + "mlp.down_proj.weight"]
    return sd


def _hf_model(name):
    cls, cfg = CASES[name]
    torch.manual_seed(0)
    hf = cls(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in n else 0.2 * torch.randn_like(p))
    return hf, ModelArch.from_hf_config(cfg)


def _megatron_logits(arch, hf, layouts, tokens):
    model = build_gpt_model(arch, pg_collection=layouts[0].pg_collection, pre_process=True, post_process=True)
    missing, unexpected = model.load_state_dict(_hf_to_megatron(hf.state_dict(), arch), strict=False)
    assert not unexpected and all("_extra_state" in k for k in missing)
    pos = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, pos, None)[..., : arch.vocab_size]


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_logits_equal_hf(layouts, name):
    hf, arch = _hf_model(name)
    tokens = torch.randint(0, 200, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    got = _megatron_logits(arch, hf, layouts, tokens)
    assert expected.std() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if name == "llama":  # the comparison is sensitive to the rope scaling it claims to reproduce
        unscaled = _megatron_logits(arch.replace(rope_scaling=None), hf, layouts, tokens)
        assert (unscaled - expected).abs().max() > 1e-2


def test_transformer_config_fields():
    _, arch = _hf_model("llama")
    cfg = transformer_config(arch, tp=2, pp=2, params_dtype=torch.bfloat16, recompute_granularity="selective")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups) == (2, 32, 4, 2)
    assert (cfg.kv_channels, cfg.ffn_hidden_size, cfg.layernorm_epsilon) == (16, 48, 1e-5)
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size) == (2, 2)
    assert cfg.normalization == "RMSNorm" and cfg.gated_linear_unit and not cfg.add_bias_linear
    assert not cfg.add_qkv_bias and cfg.hidden_dropout == cfg.attention_dropout == 0.0
    assert cfg.bf16 and cfg.params_dtype == cfg.pipeline_dtype == torch.bfloat16
    assert cfg.recompute_granularity == "selective"
    with pytest.raises(ValueError, match="tensor_model_parallel_size=4 must divide num_key_value_heads=2"):
        transformer_config(arch, tp=4, pp=1, params_dtype=torch.float32)


@pytest.mark.skipif(torch.cuda.is_available() and te_available(), reason="checks the no-TE errors")
def test_te_and_fp8_need_transformer_engine():
    _, arch = _hf_model("qwen2")
    with pytest.raises(ValueError, match="fp8='hybrid' needs Transformer Engine"):
        transformer_config(arch, tp=1, pp=1, params_dtype=torch.bfloat16, fp8="hybrid")
    with pytest.raises(ValueError, match="transformer_impl='transformer_engine' needs Transformer Engine and CUDA"):
        layer_spec(arch, "transformer_engine")


def test_spec_choice_and_argument_errors():
    from megatron.core.tensor_parallel import ColumnParallelLinear

    _, arch = _hf_model("qwen2")
    spec = layer_spec(arch, "local")
    assert spec.submodules.self_attention.submodules.linear_qkv is ColumnParallelLinear
    if not (torch.cuda.is_available() and te_available()):
        assert layer_spec(arch, "auto").submodules.self_attention.submodules.linear_qkv is ColumnParallelLinear
    with pytest.raises(ValueError, match=r"transformer_impl='apex' is not valid; valid: \['auto', 'local'"):
        layer_spec(arch, "apex")
    with pytest.raises(ValueError, match=r"fp8='e5m2' is not a valid FP8 format; valid: \['e4m3', 'hybrid'\]"):
        transformer_config(arch, tp=1, pp=1, params_dtype=torch.bfloat16, fp8="e5m2")


def test_rope_scaling_outside_megatron_constants_is_refused(layouts):
    _, arch = _hf_model("llama")
    odd = arch.replace(rope_scaling={**arch.rope_scaling, "high_freq_factor": 2.0})
    with pytest.raises(ValueError, match="rope_scaling.high_freq_factor=2.0 is not supported"):
        build_gpt_model(odd, pg_collection=layouts[0].pg_collection, pre_process=True, post_process=True)


@pytest.mark.gpu
@pytest.mark.skipif(not te_available(), reason="needs Transformer Engine")
def test_auto_picks_transformer_engine_on_gpu():
    _, arch = _hf_model("qwen2")
    spec = layer_spec(arch, "auto")
    assert "transformer_engine" in spec.submodules.self_attention.submodules.linear_qkv.__module__
