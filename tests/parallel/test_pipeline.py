"""Pipeline parallel (PP=2 on 2 gloo ranks) against the same weights at PP=1.

Tied embeddings on purpose: at PP=2 the first and last stage each hold a copy of the embedding,
kept equal by Megatron's embedding group (gradients all-reduced in finalize_model_grads).
5 rows with micro-batch 2 = 3 micro-batches, the last one padded, so 1F1B has warmup, steady
state and cooldown.
"""

from __future__ import annotations

import torch

from tests.distributed import run_distributed
from tests.parallel._util import copy_from_full, full_slice, randomize_, reference_logprobs, tiny_arch

LR, EPS = 1e-2, 1e-3  # eps: see test_two_layouts


def _loss_fn(weights):
    def loss_fn(logp, entropy, rows):
        return -(weights[rows] * logp).sum() / weights.numel(), {}
    return loss_fn


def _worker():
    from megatron_codistill.models.provider import build_gpt_model
    from megatron_codistill.parallel.layout import build_layouts
    from megatron_codistill.parallel.logprobs import forward_logprobs
    from megatron_codistill.parallel.optimizer import build_optimizer
    from megatron_codistill.parallel.train_step import train_step

    large, small = build_layouts(tp=1, pp=2)
    arch = tiny_arch(num_layers=4, tie_word_embeddings=True)
    ref = build_gpt_model(arch, pg_collection=small.pg_collection, pre_process=True, post_process=True)
    randomize_(ref)
    stage = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=large.is_first_stage,
                            post_process=large.is_last_stage)
    copy_from_full(stage, ref, arch, large)

    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, arch.vocab_size, (5, 10), generator=gen)
    weights = torch.randn(5, 9, generator=gen)
    res = {"layout": (large.pp, large.pp_rank, large.is_first_stage, large.is_last_stage, large.pp_ranks,
                      large.last_stage_rank)}

    lp = forward_logprobs(stage, large, tokens, micro_batch_size=2)
    lp_pp1 = forward_logprobs(ref, small, tokens, micro_batch_size=2)
    with torch.no_grad():
        lp_torch, _ = reference_logprobs(ref, tokens, arch.vocab_size)
    res["pp2_vs_pp1"] = (lp - lp_pp1).abs().max().item()
    res["pp1_vs_torch"] = (lp_pp1 - lp_torch).abs().max().item()
    res["shape"] = tuple(lp.shape)

    ddp, opt, sched = build_optimizer(stage, large, lr=LR, adam_eps=EPS, clip_grad=0.0, total_steps=5)
    out = train_step(ddp, opt, large, tokens, _loss_fn(weights), micro_batch_size=2, scheduler=sched)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, eps=EPS, weight_decay=0.0)
    lp_ref, _ = reference_logprobs(ref, tokens, arch.vocab_size)
    ref_loss = _loss_fn(weights)(lp_ref, None, slice(None))[0]
    ref_loss.backward()
    ref_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()])).item()
    ref_opt.step()
    full = dict(ref.named_parameters())
    offset = large.pp_rank * 2
    diffs = {}
    for name, p in stage.named_parameters():
        parts = name.split(".")
        if name.startswith("decoder.layers."):
            parts[2] = str(int(parts[2]) + offset)
        key = ".".join(parts)
        key = key if key in full else "embedding.word_embeddings.weight"  # tied output copy
        diffs[name] = (p.detach() - full_slice(full[key].detach(), name, p, arch, large)).abs().max().item()
    res["step"] = {"loss": (out["loss"], ref_loss.item()), "grad_norm": (out["grad_norm"], ref_norm),
                   "param_diff": max(diffs.values()), "names": sorted(diffs)}
    return res


def test_pp2_forward_and_train_step_equal_pp1():
    results = run_distributed(_worker, 2)
    for rank, res in enumerate(results):
        assert res["layout"] == (2, rank, rank == 0, rank == 1, (0, 1), 1)
        assert res["shape"] == (5, 9)  # returned on both stages
        assert res["pp2_vs_pp1"] <= 1e-5
        assert res["pp1_vs_torch"] <= 1e-5
        step = res["step"]
        assert abs(step["loss"][0] - step["loss"][1]) <= 1e-6
        assert abs(step["grad_norm"][0] - step["grad_norm"][1]) <= 1e-5 * step["grad_norm"][1]
        assert step["param_diff"] <= 1e-6
    # first stage: embedding + layers 0-1; last stage: layers 2-3, final norm, tied output copy
    assert "embedding.word_embeddings.weight" in results[0]["step"]["names"]
    assert "output_layer.weight" in results[1]["step"]["names"]
