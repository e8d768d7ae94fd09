"""Activation recomputation: each option gives the loss and gradients of no recompute, and really
recomputes (the checkpointed modules run again in the backward pass); refused combinations name the
field. One gloo rank in this process."""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.config import ConfigError, load_config, validate
from megatron_codistill.models.provider import build_gpt_model, recompute_options
from megatron_codistill.parallel.logprobs import vocab_parallel_logprobs
from tests.parallel._util import randomize_, tiny_arch
from tests.trainer.conftest import TINY

VARIANTS = {  # name -> (build kwargs, layer forwards, core-attention forwards) for 4 layers
    "none": ({}, 4, 4),
    "selective": ({"recompute": "selective"}, 4, 8),
    "full_uniform_1": ({"recompute": "full"}, 8, 8),
    "full_uniform_2": ({"recompute": "full", "recompute_num_layers": 2}, 8, 8),
    "full_block_1": ({"recompute": "full", "recompute_method": "block", "recompute_num_layers": 1}, 5, 5),
    "full_block_all": ({"recompute": "full", "recompute_method": "block"}, 8, 8),
}


def _loss_and_grads(layouts, kwargs):
    large, _ = layouts
    arch = tiny_arch(num_layers=4)
    torch.manual_seed(0)
    model = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True, **kwargs)
    randomize_(model)
    calls = {"layer": 0, "core_attention": 0}

    def count(kind):
        def hook(*_):
            calls[kind] += 1
        return hook

    for layer in model.decoder.layers:
        layer.register_forward_hook(count("layer"))
        layer.self_attention.core_attention.register_forward_hook(count("core_attention"))
    model.train()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, arch.vocab_size, (3, 12), generator=gen)
    weights = torch.randn(3, 11, generator=gen)
    inputs = tokens[:, :-1]
    positions = torch.arange(inputs.shape[1]).expand_as(inputs)
    logits = model(inputs, positions, None)
    logp = vocab_parallel_logprobs(logits, tokens[:, 1:], large.tp_group, arch.vocab_size)
    loss = (weights * logp).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return float(loss), grads, calls


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
def test_recompute_gives_the_loss_and_gradients_of_none(layouts, variant):
    kwargs, layer_calls, attention_calls = VARIANTS[variant]
    loss0, grads0, calls0 = _loss_and_grads(layouts, {})
    loss, grads, calls = _loss_and_grads(layouts, kwargs)
    assert calls0 == {"layer": 4, "core_attention": 4}
    assert calls == {"layer": layer_calls, "core_attention": attention_calls}  # what ran again in backward
    assert loss == loss0
    assert grads.keys() == grads0.keys()
    for name, g in grads.items():
        assert torch.allclose(g, grads0[name], rtol=1e-6, atol=1e-7), name


@pytest.mark.parametrize("args, message", [
    (("partial",), "recompute='partial' is not valid"),
    (("selective", "uniform", None), "apply only to recompute='full'"),
    (("none", None, 2), "apply only to recompute='full'"),
    (("full", "ring", None), "recompute_method='ring' is not valid"),
    (("full", "block", 5), r"recompute_num_layers \(5\) must be between 1 and the layers per pipeline stage \(4\)"),
    (("full", "uniform", 3), r"recompute_num_layers \(3\) must divide the layers per pipeline stage \(4\)"),
])
def test_refused_combinations(args, message):
    recompute, method, num_layers = (*args, None, None)[:3]
    with pytest.raises(ValueError, match=message):
        recompute_options(recompute, method=method, num_layers=num_layers, layers_per_stage=4)


def test_megatron_fields_of_each_choice():
    assert recompute_options("none", layers_per_stage=4) == {}
    assert recompute_options("selective", layers_per_stage=4) == {"recompute_granularity": "selective",
                                                                  "recompute_modules": ["core_attn"]}
    assert recompute_options("full", layers_per_stage=4) == {
        "recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    assert recompute_options("full", method="block", layers_per_stage=4)["recompute_num_layers"] == 4


@pytest.mark.parametrize("overrides, world, message", [
    (["large.recompute=full", "large.recompute_num_layers=3"], 1,
     "large: recompute_num_layers (3) must be between 1 and the layers per pipeline stage (2)"),
    (["large.recompute=full", "large.pipeline_parallel=2", "large.recompute_num_layers=2"], 2,
     "layers per pipeline stage (1)"),
    (["small.recompute=selective", "small.recompute_num_layers=1"], 1, "small: recompute_method"),
    (["small.micro_batch_tokens=39"], 1,
     "small.micro_batch_tokens (39) must hold the longest rollout: rollout.max_prompt_length + "
     "sampling.max_new_tokens = 40 tokens"),
])
def test_config_refuses_before_compute(overrides, world, message):
    cfg = load_config(TINY, overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg, world)
    assert message in str(e.value)


def test_config_accepts_valid_choices():
    validate(load_config(TINY, ["large.recompute=full", "large.recompute_method=block", "small.recompute=selective",
                                "small.micro_batch_tokens=40", "small.micro_batch_size=3"]), 1)
