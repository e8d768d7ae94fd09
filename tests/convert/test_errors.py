"""Every refusal happens before anything is written, and names what is wrong.

Each case corrupts a copy of a tiny valid checkpoint, runs the conversion and checks the message
and that the output directory's parent holds nothing new (no half checkpoint, no temp dir).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_codistill.convert import CheckpointError, convert_hf_to_mcore, convert_mcore_to_hf
from megatron_codistill.convert.output_dir import MARKER
from tests.convert._util import hf_config, make_hf_model, save_hf


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    hf = save_hf(make_hf_model(hf_config("qwen2")), str(root / "hf"), max_shard_size="40KB")
    return hf, convert_hf_to_mcore(hf, str(root / "mcore"))


@pytest.fixture
def hf(source, tmp_path):
    return shutil.copytree(source[0], tmp_path / "in")


@pytest.fixture
def mcore(source, tmp_path):
    return shutil.copytree(source[1], tmp_path / "in_mcore")


def _refused(tmp_path, convert, src, match, **kw):
    before = set(os.listdir(tmp_path))
    with pytest.raises((CheckpointError, ValueError), match=match):
        convert(str(src), str(tmp_path / "out"), **kw)
    assert set(os.listdir(tmp_path)) == before  # nothing written, no temp dir left


def _edit_config(path, **changes):
    with open(path / "config.json") as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path / "config.json", "w") as f:
        json.dump(cfg, f)


def _shard_of(path, name):
    with open(path / "model.safetensors.index.json") as f:
        return path / json.load(f)["weight_map"][name]


def _rewrite_shard(path, name, change):
    """Apply change(tensors) to the shard holding `name` and keep the index consistent."""
    shard = _shard_of(path, name)
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    with open(path / "model.safetensors.index.json") as f:
        index = json.load(f)
    index["weight_map"] = {n: f for n, f in index["weight_map"].items() if f != shard.name or n in tensors}
    index["weight_map"].update({n: shard.name for n in tensors})
    with open(path / "model.safetensors.index.json", "w") as f:
        json.dump(index, f)


def test_unsupported_architecture_is_named_with_the_supported_ones(hf, tmp_path):
    _edit_config(hf, architectures=["MistralForCausalLM"], model_type="mistral")
    _refused(tmp_path, convert_hf_to_mcore, hf,
             r"'MistralForCausalLM' is not supported.*LlamaForCausalLM.*Qwen2")


def test_missing_and_unexpected_tensors_are_listed(hf, tmp_path):
    def change(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.mlp.gate_proj.bias"] = torch.ones(96)

    _rewrite_shard(hf, "model.layers.1.mlp.up_proj.weight", change)
    _refused(tmp_path, convert_hf_to_mcore, hf,
             r"missing \['model.layers.1.mlp.up_proj.weight'\]; "
             r"unexpected \['model.layers.0.mlp.gate_proj.bias'\]")


def test_rope_buffers_of_older_llama_exports_are_ignored(hf, tmp_path):
    """Like transformers: `rotary_emb.inv_freq` is derived from the config, not a weight."""
    _rewrite_shard(hf, "model.layers.0.self_attn.q_proj.weight",
                   lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    out = convert_hf_to_mcore(str(hf), str(tmp_path / "out"))
    assert os.path.isfile(os.path.join(out, MARKER))


def test_config_that_does_not_match_the_weights_is_a_shape_mismatch(hf, tmp_path):
    _edit_config(hf, intermediate_size=128)  # the silent-mistake case: weights were made with 96
    _refused(tmp_path, convert_hf_to_mcore, hf,
             r"shape mismatch: model.layers.0.mlp.gate_proj.weight: expected \[128, 64\], found \[96, 64\]")


def test_attention_output_bias_has_no_megatron_home(hf, tmp_path):
    """Llama with attention_bias=True also biases o_proj; Megatron's spec has no such tensor."""
    _edit_config(hf, architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=True)
    _rewrite_shard(hf, "model.layers.0.self_attn.o_proj.weight",
                   lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}))
    _refused(tmp_path, convert_hf_to_mcore, hf, r"unexpected \['model.layers.0.self_attn.o_proj.bias'\]")


@pytest.mark.parametrize("tp, pp, match", [
    (3, 1, r"tensor_model_parallel_size=3 must divide num_attention_heads=4"),
    (4, 1, r"tensor_model_parallel_size=4 must divide num_key_value_heads=2"),
    (1, 3, r"pipeline_model_parallel_size=3 must divide num_layers=2"),
])
def test_layouts_the_model_cannot_take(hf, tmp_path, tp, pp, match):
    _refused(tmp_path, convert_hf_to_mcore, hf, match, tp=tp, pp=pp)


def test_truncated_safetensors(hf, tmp_path):
    shard = _shard_of(hf, "model.layers.1.mlp.down_proj.weight")
    os.truncate(shard, os.path.getsize(shard) - 100)
    _refused(tmp_path, convert_hf_to_mcore, hf, rf"{shard.name}: truncated safetensors file")


def test_corrupt_safetensors_header(hf, tmp_path):
    shard = _shard_of(hf, "model.layers.1.mlp.down_proj.weight")
    with open(shard, "r+b") as f:
        f.seek(8)
        f.write(b"\xff\xfe not json")
    _refused(tmp_path, convert_hf_to_mcore, hf, rf"{shard.name}: corrupt safetensors header")


def test_missing_shard_file(hf, tmp_path):
    os.remove(_shard_of(hf, "model.norm.weight"))
    _refused(tmp_path, convert_hf_to_mcore, hf,
             r"lists shard 'model-\d+-of-\d+.safetensors', which does not exist")


def test_existing_checkpoint_is_refused_unless_overwrite(source, tmp_path):
    hf = source[0]
    out = convert_hf_to_mcore(hf, str(tmp_path / "out"))
    stamp = os.path.getmtime(os.path.join(out, MARKER))
    with pytest.raises(CheckpointError, match="already holds files.*--overwrite"):
        convert_hf_to_mcore(hf, out)
    assert os.path.getmtime(os.path.join(out, MARKER)) == stamp
    convert_hf_to_mcore(hf, out, overwrite=True, dtype=torch.bfloat16)
    with open(os.path.join(out, MARKER)) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the old checkpoint and temp dirs are gone


def test_overwrite_never_deletes_a_directory_that_is_not_a_checkpoint(source, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    _refused(tmp_path, convert_hf_to_mcore, source[0], "does not hold a checkpoint", overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_interrupted_conversion_leaves_nothing(source, tmp_path, monkeypatch):
    import megatron_codistill.convert.hf_to_mcore as h2m

    def crash(state, directory):
        open(os.path.join(directory, "__0_0.distcp"), "wb").close()  # a partial write
        raise KeyboardInterrupt

    monkeypatch.setattr(h2m, "save_sharded", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_hf_to_mcore(source[0], str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_megatron_checkpoint_without_marker_is_incomplete(mcore, tmp_path):
    os.remove(mcore / MARKER)
    _refused(tmp_path, convert_mcore_to_hf, mcore, "not a complete checkpoint")


def test_hf_directory_given_as_megatron_checkpoint(source, tmp_path):
    hf_out = convert_mcore_to_hf(source[1], str(tmp_path / "hf"))
    _refused(tmp_path, convert_mcore_to_hf, hf_out, "is not 'codistill-mcore.*use hf-to-mcore")


def test_truncated_megatron_data_file(mcore, tmp_path):
    data = sorted(p for p in os.listdir(mcore) if p.endswith(".distcp"))[0]
    os.truncate(mcore / data, os.path.getsize(mcore / data) // 2)
    _refused(tmp_path, convert_mcore_to_hf, mcore, rf"{data}: truncated")


def test_megatron_checkpoint_of_another_architecture(mcore, tmp_path):
    with open(mcore / MARKER) as f:
        meta = json.load(f)
    meta["arch"]["num_layers"], meta["arch"]["ffn_hidden_size"] = 3, 128
    with open(mcore / MARKER, "w") as f:
        json.dump(meta, f)
    _refused(tmp_path, convert_mcore_to_hf, mcore,
             r"shape mismatch: .*decoder.layers.mlp.linear_fc1.weight: "
             r"expected \[3, 256, 64\], found \[2, 192, 64\]")
