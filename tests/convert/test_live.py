"""Checkpoints in and out of a live sharded model (the trainer's path): HF dir or converted Megatron
checkpoint in, HF checkpoint out, at TP=1 and TP=2, compared with the original tensors."""

import os

import pytest
import torch
from safetensors.torch import load_file

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.live import checkpoint_kind, load_checkpoint_into_model, resolve_location
from tests.convert._util import hf_config, make_hf_model, save_hf
from tests.distributed import run_distributed


def _hf_tensors(directory: str) -> dict[str, torch.Tensor]:
    out = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, name)))
    return out


def _round_trip(hf_dir: str, mcore_dir: str, out_root: str, tp: int):
    from megatron_codistill.convert.live import save_hf_from_model
    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.provider import build_gpt_model
    from megatron_codistill.parallel.layout import build_layouts

    large, _ = build_layouts(tp=tp, pp=1)
    arch = ModelArch.from_hf_config(hf_dir)
    for source in (hf_dir, mcore_dir):
        model = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True)
        load_checkpoint_into_model(model, arch, source, tp_group=large.tp_group)
        out = os.path.join(out_root, f"tp{tp}_{checkpoint_kind(source)}")
        save_hf_from_model(model, arch, out, tp_group=large.tp_group, pp_group=large.pp_group,
                           tokenizer_dir=hf_dir)
    return True


@pytest.mark.parametrize("family, tie, tp", [("qwen2", False, 2), ("llama", True, 1)])
def test_load_and_save_hf_from_a_live_model_is_exact(family, tie, tp, tmp_path):
    hf_dir = str(tmp_path / "hf")
    model = make_hf_model(hf_config(family, tie=tie))
    save_hf(model, hf_dir)
    from megatron_codistill.convert.hf_to_mcore import convert_hf_to_mcore

    convert_hf_to_mcore(hf_dir, str(tmp_path / "mcore"), tp=1)  # saved at TP=1, loaded at `tp`
    original = {k: v for k, v in model.state_dict().items() if "rotary" not in k}
    if tie:
        original.pop("lm_head.weight")
    run_distributed(_round_trip, tp, hf_dir, str(tmp_path / "mcore"), str(tmp_path / "out"), tp)
    for kind in ("hf", "mcore"):
        out = str(tmp_path / "out" / f"tp{tp}_{kind}")
        saved = _hf_tensors(out)
        assert sorted(saved) == sorted(original), kind
        for name, tensor in original.items():
            assert torch.equal(saved[name], tensor), (kind, name)
        assert os.path.isfile(os.path.join(out, "config.json"))
        assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / f"tp{tp}_mcore")).eval()
    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, model(tokens).logits)


def test_locations_that_are_neither_dir_nor_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory nor a hub id"):
        resolve_location(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a Megatron checkpoint"):
        checkpoint_kind(str(tmp_path / "empty"))
