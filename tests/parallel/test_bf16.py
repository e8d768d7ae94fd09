"""bf16 on CPU: Megatron-Core's mixed precision (bf16 weights and matmuls, fp32 master weights in the
optimizer, fp32 log-probs) against the same model in fp32 for one scoring pass and one train step.

Stated tolerance: bf16 keeps 8 significant bits (relative rounding 2^-9), so log-probs of about -6
nats move by a few 1e-2 per token: max 0.06 and mean 0.012 nats (about 3x what this model shows);
the step's loss within 2e-3 of fp32's and its grad norm within 1%; the weight update of every tensor
within 8% (relative L2) of the fp32 update (about 3x the 2-3% seen; Adam eps 1e-3, see test_two_layouts).
"""

from __future__ import annotations

import torch

from megatron_codistill.models.provider import build_gpt_model
from megatron_codistill.parallel.logprobs import forward_logprobs
from megatron_codistill.parallel.optimizer import build_optimizer
from megatron_codistill.parallel.train_step import train_step
from tests.parallel._util import randomize_, tiny_arch


def _models(layouts):
    large, _ = layouts
    arch = tiny_arch()
    fp32 = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True)
    randomize_(fp32, std=0.1)
    bf16 = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True,
                           params_dtype=torch.bfloat16)
    with torch.no_grad():
        for (name, p), (name16, q) in zip(fp32.named_parameters(), bf16.named_parameters()):
            assert name == name16
            q.copy_(p)
    return fp32, bf16


def _master_params(optimizer, model) -> dict[str, torch.Tensor]:
    """name -> the fp32 master copy the mixed-precision optimizer steps (for every model parameter)."""
    (sub,) = getattr(optimizer, "chained_optimizers", [optimizer])
    names = {id(p): n for n, p in model.named_parameters()}
    pairs = [(p16, p32) for g16, g32 in zip(sub.float16_groups, sub.fp32_from_float16_groups) for p16, p32 in
             zip(g16, g32)]
    return {names[id(p16)]: p32 for p16, p32 in pairs}


def test_bf16_scoring_and_step_match_fp32_within_bf16_tolerance(layouts):
    large, _ = layouts
    fp32, bf16 = _models(layouts)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}  # norms too (Float16Module's cast)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 300, (8, 24), generator=gen)
    lp32 = forward_logprobs(fp32, large, tokens, micro_batch_size=4)
    lp16 = forward_logprobs(bf16, large, tokens, micro_batch_size=4)
    assert lp16.dtype == torch.float32  # softmax of the bf16 logits in fp32 (KD and IS read these)
    err = (lp16 - lp32).abs()
    assert float(err.max()) < 0.06 and float(err.mean()) < 0.012
    assert float(err.max()) > 0, "bf16 must actually run in bf16"

    weights = torch.randn(8, 23, generator=gen)

    def loss_fn(logp, entropy, rows):
        return -(weights[rows] * logp).sum() / weights.numel(), {}

    before = {n: p.detach().float().clone() for n, p in bf16.named_parameters()}
    before32 = {n: p.detach().clone() for n, p in fp32.named_parameters()}
    steps = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        ddp, opt, sched = build_optimizer(model, large, lr=1e-2, adam_eps=1e-3, clip_grad=0.0)
        steps[name] = (train_step(ddp, opt, large, tokens, loss_fn, micro_batch_size=4, scheduler=sched), opt)
    out32, out16 = steps["fp32"][0], steps["bf16"][0]
    (sub,) = getattr(steps["bf16"][1], "chained_optimizers", [steps["bf16"][1]])
    assert type(sub).__name__ == "Float16OptimizerWithFloat16Params"
    assert abs(out16["loss"] - out32["loss"]) < 2e-3
    assert abs(out16["grad_norm"] - out32["grad_norm"]) < 0.01 * out32["grad_norm"]
    masters = _master_params(steps["bf16"][1], bf16)
    assert masters.keys() == before.keys()
    for name, master in masters.items():
        assert master.dtype == torch.float32
        model_param = dict(bf16.named_parameters())[name]
        assert torch.equal(model_param.detach(), master.detach().to(torch.bfloat16))  # bf16 copy of the master
        d16, d32 = master.detach() - before[name], dict(fp32.named_parameters())[name].detach() - before32[name]
        assert float(d32.norm()) > 0
        assert float((d16 - d32).norm() / d32.norm()) < 0.08, name
