"""One Megatron optimizer per model: DDP wrapper, Adam(W), gradient clipping, lr schedule.

`build_optimizer` wraps a model in Megatron's DistributedDataParallel (gradients reduced over the
layout's DP group) and builds `get_megatron_optimizer(pg_collection=...)`: AdamW with decoupled
weight decay (Megatron exempts biases and 1-D weights such as norms from decay), global-norm
clipping over the whole TP x PP x DP instance, and `OptimizerParamScheduler`.

Schedule (Megatron's convention): the lr used by optimizer step k (0-based) is
    warmup (k < warmup_steps): lr * k / warmup_steps      (so step 0 runs at lr 0 when warming up)
    then constant: lr | linear / cosine: from lr down to min_lr at k = total_steps.

Checkpointing (`state_dict` / `load_state_dict`), per rank and for the same layout on resume:
the scheduler state (step count and lr settings), and for every sub-optimizer the torch
optimizer state (Adam moments and step, for this rank's parameters or, with the distributed
optimizer, this rank's shard) plus the fp32 main parameters when they are separate copies of
bf16/fp16 model weights. Model weights themselves are saved by the model checkpoint.
"""

from __future__ import annotations

import copy

import torch

from megatron_codistill.parallel.schedule import unwrap

DECAY_STYLES = ("constant", "linear", "cosine")


def build_optimizer(model, layout, *, lr: float, min_lr: float = 0.0, weight_decay: float = 0.0,
                    adam_beta1: float = 0.9, adam_beta2: float = 0.999, adam_eps: float = 1e-8,
                    clip_grad: float = 1.0, warmup_steps: int = 0, total_steps: int = 1,
                    decay_style: str = "constant", use_distributed_optimizer: bool = False):
    """(ddp_model, optimizer, scheduler) for this rank's GPTModel chunk in `layout`.

    clip_grad: max global grad norm (0 disables clipping). total_steps: optimizer steps of the run
    (end of the lr decay). Also sets the model config's hooks that Megatron's schedule calls:
    finalize_model_grads (DP all-reduce, tied-embedding sync across PP) and the loss scaler.
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    if decay_style not in DECAY_STYLES:
        raise ValueError(f"decay_style={decay_style!r} is not valid; valid: {list(DECAY_STYLES)}")
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}")
    if not 0.0 <= min_lr <= lr:
        raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={min_lr}, lr={lr}")
    module = unwrap(model)
    config = module.config
    dtype = config.params_dtype
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
        average_in_collective=False,  # grads scaled by 1/dp then summed: a mean over replicas
    )
    ddp = DistributedDataParallel(config, ddp_config, module, pg_collection=layout.pg_collection)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=weight_decay, adam_beta1=adam_beta1,
        adam_beta2=adam_beta2, adam_eps=adam_eps, clip_grad=clip_grad,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, [ddp], pg_collection=layout.pg_collection,
                                       use_gloo_process_groups=False)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=lr, min_lr=min_lr, lr_warmup_steps=warmup_steps,
        lr_decay_steps=total_steps, lr_decay_style=decay_style, start_wd=weight_decay,
        end_wd=weight_decay, wd_incr_steps=total_steps, wd_incr_style="constant",
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    return ddp, optimizer, scheduler


def _sub_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _keeps_main_copies(sub) -> bool:
    """Mixed-precision optimizers hold fp32 main params apart from the bf16/fp16 model weights."""
    return bool(sub.config.bf16 or sub.config.fp16)


def _main_params(sub) -> list[torch.Tensor]:
    return [p for group in sub.optimizer.param_groups for p in group["params"]]


def state_dict(optimizer, scheduler) -> dict:
    """A snapshot of this rank's optimizer + scheduler state (the module docstring says what)."""
    subs = []
    for sub in _sub_optimizers(optimizer):
        # deepcopy: torch's state_dict() hands out the live moment tensors
        entry = {"kind": type(sub).__name__, "inner": copy.deepcopy(sub.optimizer.state_dict())}
        if _keeps_main_copies(sub):
            entry["main_params"] = [p.detach().clone() for p in _main_params(sub)]
        subs.append(entry)
    return {"scheduler": scheduler.state_dict(), "optimizers": subs}


def load_state_dict(optimizer, scheduler, state: dict) -> None:
    """Restore what `state_dict` saved, into an optimizer built for the same model and layout."""
    subs = _sub_optimizers(optimizer)
    if len(subs) != len(state["optimizers"]):
        raise ValueError(f"checkpoint has {len(state['optimizers'])} sub-optimizers, this optimizer "
                         f"{len(subs)}: the layout or model differs from the saved run")
    for sub, entry in zip(subs, state["optimizers"]):
        if entry["kind"] != type(sub).__name__:
            raise ValueError(f"checkpoint optimizer {entry['kind']} does not match {type(sub).__name__}")
        sub.optimizer.load_state_dict(entry["inner"])
        if "main_params" in entry:
            with torch.no_grad():
                for param, saved in zip(_main_params(sub), entry["main_params"]):
                    param.copy_(saved)
            sub._copy_main_params_to_model_params()
    scheduler.load_state_dict(state["scheduler"])
