"""Micro-batch shapes the schedule must handle: FP8's padding of T to a multiple of 16 (changes no
log-prob, loss or gradient), and token-budget micro-batches of different shapes through a PP=2
pipeline (each activation's shape travels first) against the fixed scheme at PP=1."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from megatron_codistill.config import ModelConfig
from megatron_codistill.models.provider import build_gpt_model
from megatron_codistill.parallel.logprobs import forward_logprobs
from megatron_codistill.parallel.optimizer import build_optimizer
from megatron_codistill.parallel.schedule import FP8_SEQ_MULTIPLE
from megatron_codistill.parallel.train_step import train_step
from tests.distributed import run_distributed
from tests.parallel._util import copy_from_full, full_slice, randomize_, tiny_arch

LENGTHS = torch.tensor([10, 4, 7, 3, 9])


def _batch(arch):
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, arch.vocab_size, (5, 10), generator=gen)
    weights = torch.randn(5, 9, generator=gen) * (torch.arange(9) < LENGTHS[:, None] - 1)  # real positions
    return tokens, weights


def _loss_fn(weights):
    def loss_fn(logp, entropy, rows):
        return -(weights[rows] * logp).sum() / weights.numel(), {"w_logp": (weights[rows] * logp).sum().detach()}
    return loss_fn


def test_fp8_padding_changes_no_logprob_loss_or_gradient(layouts):
    large, _ = layouts
    arch = tiny_arch()
    tokens, weights = _batch(arch)
    results = []
    for multiple in (1, FP8_SEQ_MULTIPLE):
        torch.manual_seed(0)
        model = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True)
        randomize_(model)
        lp = forward_logprobs(model, large, tokens, micro_batch_size=2, seq_multiple=multiple)
        ddp, opt, sched = build_optimizer(model, large, lr=1e-2, adam_eps=1e-3, clip_grad=0.0)
        out = train_step(ddp, opt, large, tokens, _loss_fn(weights), micro_batch_size=2, seq_multiple=multiple,
                         lengths=LENGTHS)
        grads = {n: p.main_grad.clone() for n, p in ddp.module.named_parameters()}
        results.append((lp, out, grads))
    (lp1, out1, g1), (lp16, out16, g16) = results
    assert lp16.shape == lp1.shape == (5, 9)
    assert torch.allclose(lp16, lp1, atol=1e-5, rtol=0)
    assert abs(out16["loss"] - out1["loss"]) < 1e-6 and abs(out16["w_logp"] - out1["w_logp"]) < 1e-5
    for name, g in g1.items():
        assert torch.allclose(g16[name], g, atol=1e-6, rtol=1e-5), name
    # 3 micro-batches of 2 rows at T 10 -> 1 + 16 = 17 positions: padding reported as such
    assert out16["pad_frac_fixed"] == out16["pad_frac"] == 1 - int(LENGTHS.sum()) / (3 * 2 * 17)
    assert out1["pad_frac"] == 1 - int(LENGTHS.sum()) / (3 * 2 * 10)


def test_fp8_models_pad_to_sixteen_and_others_do_not():
    from megatron_codistill.trainer.policy import Policy

    for fp8, multiple in ((None, 1), ("e4m3", FP8_SEQ_MULTIPLE)):
        stub = SimpleNamespace(cfg=ModelConfig(fp8=fp8, micro_batch_size=3, micro_batch_tokens=64))
        assert Policy._micro_batching(stub, LENGTHS) == dict(micro_batch_size=3, micro_batch_tokens=64,
                                                             lengths=LENGTHS, seq_multiple=multiple)


def _pp_worker():
    from megatron_codistill.parallel.layout import build_layouts

    large, small = build_layouts(tp=1, pp=2)
    arch = tiny_arch(num_layers=4)
    ref = build_gpt_model(arch, pg_collection=small.pg_collection, pre_process=True, post_process=True)
    randomize_(ref)
    stage = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=large.is_first_stage,
                            post_process=large.is_last_stage)
    copy_from_full(stage, ref, arch, large)
    tokens, weights = _batch(arch)
    budget = dict(lengths=LENGTHS, micro_batch_tokens=14)  # rows [[0], [4], [2, 1], [3]]: four shapes
    lp = forward_logprobs(stage, large, tokens, micro_batch_size=2, **budget)
    lp_ref = forward_logprobs(ref, small, tokens, micro_batch_size=2)
    real = torch.arange(9) < LENGTHS[:, None] - 1
    out = {"lp_err": float((lp - lp_ref)[real].abs().max())}
    opts = dict(lr=1e-2, adam_eps=1e-3, clip_grad=0.0)
    ddp, opt, _ = build_optimizer(stage, large, **opts)
    step = train_step(ddp, opt, large, tokens, _loss_fn(weights), micro_batch_size=2, **budget)
    ddp_ref, opt_ref, _ = build_optimizer(ref, small, **opts)
    step_ref = train_step(ddp_ref, opt_ref, small, tokens, _loss_fn(weights), micro_batch_size=2, lengths=LENGTHS)
    full = dict(ref.named_parameters())
    offset = large.pp_rank * 2
    err = 0.0
    for name, p in stage.named_parameters():
        parts = name.split(".")
        if name.startswith("decoder.layers."):
            parts[2] = str(int(parts[2]) + offset)
        w = full_slice(full[".".join(parts)].detach(), name, p, arch, large)
        err = max(err, float((p.detach() - w).abs().max()))
    out.update(loss=(step["loss"], step_ref["loss"]), pad=(step["pad_frac"], step["pad_frac_fixed"]),
               weight_err=err)
    return out


def test_token_budget_through_pp2_equals_fixed_pp1():
    for res in run_distributed(_pp_worker, 2):
        assert res["lp_err"] < 1e-5
        assert abs(res["loss"][0] - res["loss"][1]) < 1e-6
        assert res["weight_err"] < 1e-6
        assert res["pad"][0] < res["pad"][1]
