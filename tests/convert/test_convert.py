"""Directory conversions HF -> Megatron -> HF: bit-exact tensors, side files, dtypes, sharding."""

from __future__ import annotations

import filecmp
import json
import os

import pytest
import torch

from megatron_codistill.convert import convert_hf_to_mcore, convert_mcore_to_hf
from megatron_codistill.convert.output_dir import MARKER
from megatron_codistill.models.arch import ModelArch
from tests.convert._util import LLAMA3_SCALING, hf_config, hf_logits, hf_state, make_hf_model, save_hf, tokens


@pytest.fixture(scope="module")
def qwen_hf(tmp_path_factory):
    """fp32, sharded in ~40 KB files (an index json)."""
    return save_hf(make_hf_model(hf_config("qwen2")), str(tmp_path_factory.mktemp("qwen") / "hf"))


@pytest.fixture(scope="module")
def llama_bf16_hf(tmp_path_factory):
    """bf16, tied embeddings, llama3 RoPE scaling, one model.safetensors."""
    model = make_hf_model(hf_config("llama", tie=True, rope_scaling=LLAMA3_SCALING))
    return save_hf(model, str(tmp_path_factory.mktemp("llama") / "hf"), max_shard_size="10MB",
                   dtype=torch.bfloat16)


def _same_tensors(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]) for n in a)


def test_round_trip_is_bit_exact_and_carries_config_and_tokenizer(qwen_hf, tmp_path):
    from transformers import AutoTokenizer

    mcore = convert_hf_to_mcore(qwen_hf, str(tmp_path / "mcore"), tp=2, pp=2)
    with open(os.path.join(mcore, MARKER)) as f:
        meta = json.load(f)
    assert ModelArch(**meta["arch"]) == ModelArch.from_hf_config(qwen_hf)
    assert meta["dtype"] == "float32" and meta["intended_layout"] == {"tp": 2, "pp": 2}
    assert os.path.isfile(os.path.join(mcore, ".metadata"))  # torch_dist format

    out = convert_mcore_to_hf(mcore, str(tmp_path / "hf"), max_shard_bytes=30_000)
    assert _same_tensors(hf_state(out), hf_state(qwen_hf))
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 1 and sorted(index["weight_map"]) == sorted(hf_state(out))
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(os.path.join(qwen_hf, name), os.path.join(out, name), shallow=False), name
    with open(os.path.join(qwen_hf, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        assert json.load(f) == json.load(g)
    assert AutoTokenizer.from_pretrained(out)("w5 w7 w299").input_ids == \
        AutoTokenizer.from_pretrained(qwen_hf)("w5 w7 w299").input_ids
    assert torch.equal(hf_logits(out, tokens()), hf_logits(qwen_hf, tokens()))


def test_bf16_tied_single_file_round_trip(llama_bf16_hf, tmp_path):
    mcore = convert_hf_to_mcore(llama_bf16_hf, str(tmp_path / "mcore"))
    out = convert_mcore_to_hf(mcore, str(tmp_path / "hf"))
    got = hf_state(out)
    assert "lm_head.weight" not in got and got["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert _same_tensors(got, hf_state(llama_bf16_hf))
    assert os.listdir(out).count("model.safetensors") == 1
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["tie_word_embeddings"] is True


def test_dtype_option_casts_every_tensor(qwen_hf, tmp_path):
    mcore = convert_hf_to_mcore(qwen_hf, str(tmp_path / "mcore"), dtype=torch.bfloat16)
    out = convert_mcore_to_hf(mcore, str(tmp_path / "hf"))
    want = {n: t.to(torch.bfloat16) for n, t in hf_state(qwen_hf).items()}
    assert _same_tensors(hf_state(out), want)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
