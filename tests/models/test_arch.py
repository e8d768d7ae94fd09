"""ModelArch: read from real HF config objects, dicts, saved directories and config.json files;
written back; layout checks; parameter counts against instantiated HF models; error messages."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from megatron_codistill.models.arch import ModelArch

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=301, max_position_embeddings=512)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def qwen2_config(**kw):
    return Qwen2Config(**{**SMALL, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, **kw})


def llama_config(**kw):
    cfg = {**SMALL, "max_position_embeddings": 16384, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    return LlamaConfig(**{**cfg, "rope_scaling": {**LLAMA3, "rope_theta": 5e5}, **kw})


def test_qwen2_config_object():
    arch = ModelArch.from_hf_config(qwen2_config())
    assert arch == ModelArch(family="qwen2", hidden_size=64, num_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, ffn_hidden_size=96, vocab_size=301,
                             max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-6, qkv_bias=True,
                             tie_word_embeddings=True, head_dim=16, rope_scaling=None)


def test_llama_config_object_with_llama3_rope_scaling():
    arch = ModelArch.from_hf_config(llama_config())
    assert (arch.family, arch.qkv_bias, arch.tie_word_embeddings, arch.rope_theta) == ("llama", False, False, 5e5)
    assert arch.rope_scaling == LLAMA3
    assert ModelArch.from_hf_config(llama_config(attention_bias=True)).qkv_bias is True


@pytest.mark.parametrize("make", [qwen2_config, llama_config])
def test_saved_directory_and_config_json_and_round_trip(tmp_path, make):
    cfg = make(architectures=[make().__class__.__name__.replace("Config", "ForCausalLM")])
    cfg.save_pretrained(tmp_path)
    arch = ModelArch.from_hf_config(cfg)
    assert ModelArch.from_hf_config(str(tmp_path)) == arch
    assert ModelArch.from_hf_config(tmp_path / "config.json") == arch
    assert ModelArch.from_hf_config(cfg.to_dict()) == arch
    back = arch.to_hf_config()
    assert type(back) is type(cfg) and ModelArch.from_hf_config(back) == arch


def test_transformers_4_style_dict():
    """config.json files on the hub carry rope_theta / rope_scaling (with "type") at top level."""
    old_scaling = {k: v for k, v in LLAMA3.items() if k != "rope_type"} | {"type": "llama3"}
    raw = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
           "rope_theta": 5e5, "rope_scaling": old_scaling, "rms_norm_eps": 1e-5}
    arch = ModelArch.from_hf_config(raw)
    assert arch.num_key_value_heads == 4 and arch.rope_theta == 5e5 and arch.rope_scaling == LLAMA3
    assert ModelArch.from_hf_config({**raw, "rope_scaling": None}).rope_scaling is None


@pytest.mark.parametrize("make,model_cls", [(qwen2_config, Qwen2ForCausalLM), (llama_config, LlamaForCausalLM),
                                            (lambda: qwen2_config(tie_word_embeddings=False), Qwen2ForCausalLM),
                                            (lambda: llama_config(head_dim=32), LlamaForCausalLM)])
def test_num_parameters_matches_the_hf_model(make, model_cls):
    cfg = make()
    torch.manual_seed(0)
    assert ModelArch.from_hf_config(cfg).num_parameters() == model_cls(cfg).num_parameters()


def test_unsupported_architecture_is_named_with_the_supported_ones():
    raw = qwen2_config().to_dict() | {"architectures": ["MistralForCausalLM"]}
    with pytest.raises(ValueError, match=r"'MistralForCausalLM' is not supported; supported architectures: "
                                         r"\['LlamaForCausalLM', 'Qwen2ForCausalLM'\]"):
        ModelArch.from_hf_config(raw)
    # no substring matching: a Qwen2-named relative is still refused
    with pytest.raises(ValueError, match="Qwen2MoeForCausalLM"):
        ModelArch.from_hf_config(raw | {"architectures": ["Qwen2MoeForCausalLM"]})
    with pytest.raises(ValueError, match="model_type 'qwen3' is not supported"):
        ModelArch.from_hf_config(raw | {"architectures": None, "model_type": "qwen3"})


@pytest.mark.parametrize("change,message", [
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"use_sliding_window": True}, "use_sliding_window=True is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     r"rope_type 'yarn' is not supported; valid: \['default', 'llama3'\]"),
])
def test_unsupported_features_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ModelArch.from_hf_config(qwen2_config().to_dict() | change)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="no HF config at"):
        ModelArch.from_hf_config(str(tmp_path))


def test_validate_layout_names_field_value_and_choices():
    arch = ModelArch.from_hf_config(qwen2_config())  # 4 heads, 2 KV heads, 4 layers, ffn 96
    arch.validate_layout(2, 4)
    with pytest.raises(ValueError, match=r"tensor_model_parallel_size=4 must divide num_key_value_heads=2; "
                                         r"valid tensor_model_parallel_size: \[1, 2\]"):
        arch.validate_layout(4, 1)
    with pytest.raises(ValueError, match="must divide num_attention_heads=4"):
        arch.validate_layout(3, 1)
    with pytest.raises(ValueError, match=r"pipeline_model_parallel_size=3 must divide num_layers=4 .* \[1, 2, 4\]"):
        arch.validate_layout(1, 3)
    with pytest.raises(ValueError, match=r"pipeline_model_parallel_size=8 must divide num_layers=4"):
        arch.validate_layout(1, 8)


def test_padded_vocab_and_field_checks():
    arch = ModelArch.from_hf_config(qwen2_config())
    assert [arch.padded_vocab_size(tp) for tp in (1, 2, 4)] == [384, 512, 512]
    assert arch.padded_vocab_size(1, multiple=64) == 320
    with pytest.raises(ValueError, match="qkv_bias=False is not valid for family 'qwen2'"):
        arch.replace(qkv_bias=False)
    with pytest.raises(ValueError, match="num_key_value_heads=3 must divide num_attention_heads=4"):
        arch.replace(num_key_value_heads=3)
    with pytest.raises(ValueError, match=r"family='gpt2' is not supported; valid: \['llama', 'qwen2'\]"):
        arch.replace(family="gpt2")
    assert json.dumps(arch.__dict__)  # plain values only
