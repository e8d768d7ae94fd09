"""FP8 amax reduction stays inside each model's TP x DP x CP ranks (never across pipeline stages).

- TP=2 x PP=2 on 4 gloo ranks: the large model's group is its TP pair (DP=1), the small model's is
  every rank; Megatron's get_fp8_context, as TransformerBlock calls it, hands that group to TE's
  fp8_autocast (a recording stand-in for TE here), also from a deep copy of the config; an FP8
  config built without its group is refused by name.
- TP=2 x PP=2 x DP=2 (8 ranks): the rank lists of the grid dims the layouts use for the group.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types

import pytest
import torch

from tests.distributed import run_distributed


def _fake_te(calls: list) -> dict:
    """sys.modules entries of a Transformer Engine stand-in whose fp8_autocast records its arguments."""
    pytorch = types.ModuleType("transformer_engine.pytorch")
    pytorch.fp8_autocast = lambda **kw: calls.append(kw) or "autocast"
    root = types.ModuleType("transformer_engine")
    root.pytorch = pytorch
    return {"transformer_engine": root, "transformer_engine.pytorch": pytorch}


def _worker():
    import torch.distributed as dist

    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.fp8 import amax_reduction_group, bind_amax_group
    from megatron_codistill.models.provider import transformer_config
    from megatron_codistill.parallel.layout import build_layouts

    large, small = build_layouts(tp=2, pp=2)
    ranks = {name: dist.get_process_group_ranks(amax_reduction_group(layout.pg_collection))
             for name, layout in (("large", large), ("small", small))}
    ranks["large_tp_only"] = dist.get_process_group_ranks(amax_reduction_group(large.pg_collection, tp_only=True))

    arch = ModelArch(family="qwen2", hidden_size=32, num_layers=4, num_attention_heads=4, num_key_value_heads=2,
                     ffn_hidden_size=64, vocab_size=64)
    cfg = transformer_config(arch, tp=2, pp=2, params_dtype=torch.bfloat16)
    cfg.fp8 = "hybrid"  # set after the fact: transformer_config refuses FP8 without TE, and there is none here
    calls: list = []
    sys.modules.update(_fake_te(calls))
    try:
        unbound = copy.deepcopy(cfg)
        bind_amax_group(cfg, large.pg_collection)
        from megatron.core import fp8_utils
        from megatron.core.transformer import transformer_block

        assert transformer_block.get_fp8_context(cfg) == "autocast"
        assert fp8_utils.get_fp8_context(copy.deepcopy(cfg), 1) == "autocast"  # a reference model's config
        cfg.tp_only_amax_red = True
        transformer_block.get_fp8_context(cfg)
        init = transformer_block.get_fp8_context(cfg, 0, is_init=True)  # fp8_model_init: Megatron's own
        try:
            transformer_block.get_fp8_context(unbound)
            refused = ""
        except RuntimeError as e:
            refused = str(e)
    finally:
        for name in _fake_te([]):
            sys.modules.pop(name, None)
    ranks["autocast"] = [dist.get_process_group_ranks(c["fp8_group"]) for c in calls]
    return ranks, type(init).__name__, refused


@pytest.mark.slow
def test_amax_groups_of_a_tp2_pp2_job_on_4_ranks():
    results = run_distributed(_worker, 4)
    for rank, (ranks, init, refused) in enumerate(results):
        pair = [0, 1] if rank < 2 else [2, 3]  # rank order tp-cp-ep-dp-pp: stage 0 is ranks 0-1
        assert ranks["large"] == pair and ranks["large_tp_only"] == pair
        assert ranks["small"] == [0, 1, 2, 3]  # TP=PP=1, DP over every rank: the whole job is its group
        assert ranks["autocast"] == [pair, pair, pair]
        assert init == "nullcontext"
        assert "build it with models.provider.build_gpt_model" in refused


def test_amax_group_dims_of_a_tp2_pp2_dp2_grid_stay_within_a_stage(monkeypatch):
    from megatron.core.hyper_comm_grid import HyperCommGrid

    from megatron_codistill.parallel.layout import _DIMS, _GROUPS

    monkeypatch.setenv("WORLD_SIZE", "8")  # the grid only enumerates ranks; no process group is made
    grid = HyperCommGrid([2, 1, 1, 2, 2], _DIMS)
    amax = grid.get_rank_enum(_GROUPS["tp_dp_cp"])
    assert sorted(map(sorted, amax)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    stages = {r: next(i for i, pipe in enumerate(zip(*grid.get_rank_enum("pp"))) if r in pipe) for r in range(8)}
    assert all(len({stages[r] for r in group}) == 1 for group in amax)
    assert sorted(map(sorted, grid.get_rank_enum(_GROUPS["tp_cp"]))) == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_a_forward_of_an_fp8_model_autocasts_with_its_group(layouts, monkeypatch):
    """build_gpt_model(fp8=...) binds the group; Megatron's TransformerBlock.forward then enters TE's
    autocast with it. The local spec stands in for TE's layers (the config gets fp8 after the build)."""
    from megatron_codistill.models import provider
    from megatron_codistill.models.arch import ModelArch

    real = provider.transformer_config
    monkeypatch.setattr(provider, "transformer_config", lambda arch, fp8=None, **kw: real(arch, **kw))
    arch = ModelArch(family="qwen2", hidden_size=32, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     ffn_hidden_size=64, vocab_size=64)
    large = layouts[0]
    model = provider.build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True,
                                     transformer_impl="local", fp8="hybrid")
    model.config.fp8 = "hybrid"
    calls: list = []
    for name, module in _fake_te(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys.modules["transformer_engine.pytorch"], "fp8_autocast",
                        lambda **kw: calls.append(kw) or contextlib.nullcontext())
    tokens = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        logits = model(tokens, torch.arange(8).expand(2, -1), None)
    assert logits.shape[:2] == (2, 8)
    assert len(calls) == 1 and calls[0]["fp8_group"] is large.pg_collection.tp_dp_cp and calls[0]["enabled"]
