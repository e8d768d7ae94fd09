"""The mapping table against what transformers really saves, and name dispatch in both directions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.mapping import (
    check_tensor_set,
    entries,
    entry_for_param,
    expected_hf_tensors,
    mcore_shape,
    rules_for,
    stage_layers,
)
from megatron_codistill.models.arch import ModelArch
from tests.convert._util import hf_config, make_hf_model, save_hf


@pytest.mark.parametrize("family, extra", [
    ("qwen2", dict()),                                   # QKV bias, untied, GQA 4:2
    ("llama", dict(tie=True)),                           # tied: no lm_head in the files
    ("llama", dict(kv_heads=1)),                         # multi-query attention
    ("llama", dict(kv_heads=4)),                         # multi-head attention
])
def test_expected_tensors_are_what_save_pretrained_writes(tmp_path, family, extra):
    from safetensors import safe_open

    cfg = hf_config(family, **extra)
    path = save_hf(make_hf_model(cfg), str(tmp_path / "hf"), max_shard_size="10MB")
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        saved = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
    assert expected_hf_tensors(ModelArch.from_hf_config(path)) == saved


def _arch(**kw) -> ModelArch:
    fields = dict(family="qwen2", hidden_size=64, num_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  ffn_hidden_size=96, vocab_size=300)
    return ModelArch(**{**fields, **kw})


def test_live_parameter_names_map_to_global_layers_and_checkpoint_keys():
    arch = _arch()
    qkv = entry_for_param(arch, "decoder.layers.1.self_attention.linear_qkv.weight", layer_offset=2)
    assert qkv.layer == 3 and qkv.hf == tuple(f"model.layers.3.self_attn.{p}_proj.weight" for p in "qkv")
    assert qkv.ckpt == "decoder.layers.self_attention.linear_qkv.weight" and qkv.shape == (128, 64)
    # Transformer Engine fuses the norms into the linears; both names are the same tensor
    for name in ("decoder.layers.0.input_layernorm.weight",
                 "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"):
        e = entry_for_param(arch, name, layer_offset=0)
        assert e.hf == ("model.layers.0.input_layernorm.weight",)
        assert e.ckpt == "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
    fc1 = entry_for_param(arch, "decoder.layers.0.mlp.linear_fc1.weight", 0)
    assert fc1.hf == ("model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight")
    assert mcore_shape(fc1, arch, 2, local=True) == (96, 64)
    assert mcore_shape(entry_for_param(arch, "output_layer.weight", 0), arch, 2, local=True) == (256, 64)


def test_tied_output_layer_on_a_last_stage_reads_the_embedding():
    arch = _arch(tie_word_embeddings=True)
    e = entry_for_param(arch, "output_layer.weight", 2)
    assert e.hf == ("model.embed_tokens.weight",) and e.ckpt == "embedding.word_embeddings.weight"
    assert not e.rule.exported
    last = entries(arch, range(2, 4), pre=False, post=True, exported_only=False)
    assert [x.mcore for x in last][-1] == "output_layer.weight"
    whole = entries(arch, exported_only=False)  # PP=1: the output layer uses the embedding itself
    assert "output_layer.weight" not in [x.mcore for x in whole]


def test_unknown_names_raise():
    with pytest.raises(CheckpointError, match="router.*known names"):
        entry_for_param(_arch(), "decoder.layers.0.mlp.router.weight", 0)
    with pytest.raises(CheckpointError, match="has no mapping"):  # llama without attention bias
        entry_for_param(_arch(family="llama"), "decoder.layers.0.self_attention.linear_qkv.bias", 0)
    with pytest.raises(ValueError, match=r"valid: \['llama', 'qwen2'\]"):
        rules_for(SimpleNamespace(family="gpt2"))


def test_entries_are_in_hf_order_and_stage_layers_split_evenly():
    arch = _arch()
    names = [e.mcore for e in entries(arch)]
    assert names[0] == "embedding.word_embeddings.weight" and names[-1] == "output_layer.weight"
    assert len(names) == 1 + 4 * 7 + 2
    assert stage_layers(4, 2, 1) == range(2, 4)
    stage = entries(arch, stage_layers(4, 2, 1), pre=False, post=True)
    assert {e.layer for e in stage} == {2, 3, None}
    with pytest.raises(ValueError, match="must divide num_layers=4"):
        stage_layers(4, 3, 0)


def test_check_tensor_set_lists_missing_unexpected_and_shapes():
    want = {"a": (2, 3), "b": (4,)}
    with pytest.raises(CheckpointError, match=r"missing \['b'\]; unexpected \['c'\]"):
        check_tensor_set({"a": (2, 3), "c": (1,)}, want, "dir")
    with pytest.raises(CheckpointError, match=r"a: expected \[2, 3\], found \[3, 2\]"):
        check_tensor_set({"a": (3, 2), "b": (4,)}, want, "dir")
