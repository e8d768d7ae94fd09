"""build_gpt_model puts the whole module on the current CUDA device on GPU machines (the local
spec's norms and embeddings are created on the CPU; TE layers allocate on CUDA by themselves)."""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.models import provider
from megatron_codistill.models.arch import ModelArch

ARCH = ModelArch(family="qwen2", hidden_size=32, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 ffn_hidden_size=64, vocab_size=64)


def test_model_device_is_the_current_cuda_device_or_the_given_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert provider.model_device() is None
    assert provider.model_device("meta") == torch.device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # LOCAL_RANK 3's device
    assert provider.model_device() == torch.device("cuda", 3)
    assert provider.model_device("cpu") == torch.device("cpu")


def test_the_built_module_is_moved_whole(layouts):
    pgc = layouts[0].pg_collection
    on_cpu = provider.build_gpt_model(ARCH, pg_collection=pgc, pre_process=True, post_process=True)
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}  # no CUDA here: left where it was built
    moved = provider.build_gpt_model(ARCH, pg_collection=pgc, pre_process=True, post_process=True, device="meta")
    assert {t.device.type for t in [*moved.parameters(), *moved.buffers()]} == {"meta"}
    norms = [n for n, _ in moved.named_parameters() if "layernorm" in n]
    assert norms  # the local spec's torch norms, which would otherwise stay behind on the CPU


@pytest.mark.gpu
def test_on_a_gpu_every_parameter_is_on_the_current_device(layouts):
    model = provider.build_gpt_model(ARCH, pg_collection=layouts[0].pg_collection, pre_process=True,
                                     post_process=True, transformer_impl="local")
    assert {p.device for p in model.parameters()} == {torch.device("cuda", torch.cuda.current_device())}
