"""Learning-rate schedules, optimizer checkpoints (save -> load -> same next step), argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_codistill.parallel.optimizer import build_optimizer, load_sharded_state_dict, sharded_state_dict
from megatron_codistill.parallel.train_step import train_step
from tests.parallel._util import randomize_, tiny_arch

TOKENS = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(9))


def _loss_fn(logp, entropy, rows):
    return -logp.mean(), {"neg_logp": -logp.mean()}


def _model(layouts, dtype=torch.float32):
    from megatron_codistill.models.provider import build_gpt_model

    model = build_gpt_model(tiny_arch(num_layers=1), pg_collection=layouts[0].pg_collection,
                            pre_process=True, post_process=True, params_dtype=dtype)
    randomize_(model)
    return model


def _expected_lr(style, k, lr=1.0, min_lr=0.1, warmup=2, total=6):
    """lr used by step k: linear warmup from 0, then decay to min_lr at k = total (Megatron's rule)."""
    if k <= warmup:
        return lr * k / warmup
    ratio = (k - warmup) / (total - warmup)
    coeff = {"constant": 1.0, "linear": 1.0 - ratio, "cosine": 0.5 * (math.cos(math.pi * ratio) + 1.0)}[style]
    return lr if style == "constant" else min_lr + coeff * (lr - min_lr)


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
def test_lr_schedule(layouts, style):
    large = layouts[0]
    ddp, opt, sched = build_optimizer(_model(layouts), large, lr=1.0, min_lr=0.1, warmup_steps=2,
                                      total_steps=6, decay_style=style)
    lrs = [train_step(ddp, opt, large, TOKENS, _loss_fn, micro_batch_size=2, scheduler=sched)["lr"]
           for _ in range(6)]
    assert lrs == pytest.approx([_expected_lr(style, k) for k in range(6)], abs=1e-9)


def test_train_step_metrics(layouts):
    large = layouts[0]
    ddp, opt, sched = build_optimizer(_model(layouts), large, lr=1e-3)
    out = train_step(ddp, opt, large, TOKENS, _loss_fn, micro_batch_size=1, scheduler=sched,
                     batch_metrics={"given": 3.5})
    # two micro-batches of one row: "loss" and every metric are sums over the micro-batches
    assert out["loss"] == pytest.approx(out["neg_logp"], rel=1e-6)
    assert out["given"] == 3.5
    assert out["update_ok"] == 1.0 and out["grad_norm"] > 0 and out["lr"] == 1e-3


@pytest.mark.parametrize("distributed,dtype", [(False, torch.float32), (True, torch.float32),
                                               (False, torch.bfloat16)])
def test_checkpoint_round_trip_gives_the_same_next_step(layouts, distributed, dtype, tmp_path):
    """Through a Megatron distributed checkpoint of the model's and optimizer's sharded state dicts.
    bf16: the fp32 main weights are saved too; a resume from the bf16 weights alone would differ."""
    from megatron_codistill.convert.mcore_ckpt import load_sharded, save_sharded

    large = layouts[0]
    kwargs = dict(lr=1e-2, weight_decay=0.1, warmup_steps=1, total_steps=5, decay_style="cosine",
                  use_distributed_optimizer=distributed)
    model = _model(layouts, dtype)
    ddp, opt, sched = build_optimizer(model, large, **kwargs)
    for _ in range(2):
        train_step(ddp, opt, large, TOKENS, _loss_fn, micro_batch_size=2, scheduler=sched)
    weights = _sharded_model(model)
    save_sharded({"model": weights, "optimizer": sharded_state_dict(opt, sched, weights)}, str(tmp_path))
    train_step(ddp, opt, large, TOKENS, _loss_fn, micro_batch_size=2, scheduler=sched)
    continued = [p.detach().clone() for p in model.parameters()]

    resumed = _model(layouts, dtype)
    ddp2, opt2, sched2 = build_optimizer(resumed, large, **kwargs)
    request = _sharded_model(resumed)
    saved = {"kind": "distributed" if distributed else "local", "initialized": True}
    loaded = load_sharded({"model": request, "optimizer": sharded_state_dict(opt2, sched2, request, saved=saved)},
                          str(tmp_path))
    with torch.no_grad():
        for name, p in resumed.named_parameters():
            p.copy_(loaded["model"][name])
    load_sharded_state_dict(opt2, sched2, loaded["optimizer"])
    out = train_step(ddp2, opt2, large, TOKENS, _loss_fn, micro_batch_size=2, scheduler=sched2)
    assert out["lr"] == pytest.approx(_expected_lr("cosine", 2, lr=1e-2, min_lr=0.0, warmup=1, total=5))
    for a, b in zip(continued, resumed.parameters()):
        assert torch.equal(a, b.detach()), (a - b.detach()).abs().max().item()


def _sharded_model(model) -> dict:
    from megatron_codistill.convert.mapping import entry_for_param
    from megatron_codistill.convert.mcore_ckpt import param_factory

    arch = tiny_arch(num_layers=1)
    return {name: param_factory(entry_for_param(arch, name, 0), p, key=entry_for_param(arch, name, 0).ckpt,
                                num_layers=1, tp_rank=0, tp=1, dp_rank=0) for name, p in model.named_parameters()}


def test_optimizer_argument_errors(layouts):
    large = layouts[0]
    model = _model(layouts)
    with pytest.raises(ValueError, match=r"decay_style='step' is not valid; valid: \['constant', 'linear'"):
        build_optimizer(model, large, lr=1.0, decay_style="step")
    with pytest.raises(ValueError, match="warmup_steps=5, total_steps=5"):
        build_optimizer(model, large, lr=1.0, warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match="min_lr=2.0, lr=1.0"):
        build_optimizer(model, large, lr=1.0, min_lr=2.0)
