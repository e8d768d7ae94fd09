"""One Megatron optimizer per model: DDP wrapper, Adam(W), gradient clipping, lr schedule.

`build_optimizer` wraps a model in Megatron's DistributedDataParallel (gradients reduced over the
layout's DP group) and builds `get_megatron_optimizer(pg_collection=...)`: AdamW with decoupled
weight decay (Megatron exempts biases and 1-D weights such as norms from decay), global-norm
clipping over the whole TP x PP x DP instance, and `OptimizerParamScheduler`.

Schedule (Megatron's convention): the lr used by optimizer step k (0-based) is
    warmup (k < warmup_steps): lr * k / warmup_steps      (so step 0 runs at lr 0 when warming up)
    then constant: lr | linear / cosine: from lr down to min_lr at k = total_steps.

Checkpointing (`sharded_state_dict` / `load_sharded_state_dict`) goes through Megatron's own
`optimizer.sharded_state_dict(model_sharded_state_dict)`: every state tensor (Adam moments, fp32 main
copies of bf16/fp16 weights, the distributed optimizer's shards in the `fully_reshardable` format) is
stored under its parameter's layout-independent key, so it loads at any TP / PP / DP; the step count,
param-group settings and the schedule are plain values. Model weights are saved alongside by the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


def _is_distributed(sub) -> bool:
    return bool(getattr(sub, "ddp_config", None) and sub.ddp_config.use_distributed_optimizer)


def initialized(optimizer) -> bool:
    """Whether the optimizer holds Adam state (torch creates it at the first step; `reset` drops it)."""
    return any(len(sub.optimizer.state) for sub in _sub_optimizers(optimizer))


@contextlib.contextmanager
def _gather_groups(optimizer) -> Iterator[dict]:
    """Megatron's sharded-state metadata, with what the distributed optimizer's gather needs here.

    The distributed optimizer saves in Megatron's `fully_reshardable` format: its flat shards are
    gathered on DP rank 0 into parameter-shaped tensors, stored like any optimizer's state. On GPU the
    gather is an all-gather over the DP group; without CUDA it is Megatron's memory-efficient gloo
    gather, for which the DP group (gloo already on CPU) stands in for the separate gloo group that
    `build_optimizer` does not create.
    """
    cpu = not torch.cuda.is_available()
    patched = [sub for sub in _sub_optimizers(optimizer)
               if cpu and _is_distributed(sub) and sub.data_parallel_group_gloo is None]
    for sub in patched:
        sub.data_parallel_group_gloo = sub.data_parallel_group
    try:
        yield {"distrib_optim_sharding_type": "fully_reshardable",
               "distrib_optim_fully_reshardable_mem_efficient": cpu, "chained_optim_avoid_prefix": True}
    finally:
        for sub in patched:
            sub.data_parallel_group_gloo = None


def sharded_state_dict(optimizer, scheduler, model_sharded: dict, *, saved: dict | None = None) -> dict:
    """This rank's optimizer + schedule state as part of a Megatron sharded state dict.

    model_sharded: the model's sharded state dict, whose ShardedTensor(Factorie)s hold the live
    parameters (`mcore_ckpt.param_factory`): Megatron's `optimizer.sharded_state_dict` stores each
    parameter's Adam moments (and fp32 main copy for bf16/fp16 or the distributed optimizer) under the
    parameter's own layout-independent key with an `optimizer.state.<name>.` prefix; the step count,
    param-group settings and the schedule are plain values. saved: None to save; to load, the plain
    values of the checkpoint (what `load_common` returned for this part), which say what it holds.
    """
    kind = "distributed" if any(_is_distributed(s) for s in _sub_optimizers(optimizer)) else "local"
    if saved is not None and saved["kind"] != kind:
        raise ValueError(f"the checkpoint's optimizer state is {saved['kind']} (use_distributed_optimizer="
                         f"{saved['kind'] == 'distributed'}), this run's optimizer is {kind}; resume with the "
                         "saved optimizer.use_distributed_optimizer")
    has_state = initialized(optimizer) if saved is None else saved["initialized"]
    state = {"kind": kind, "initialized": has_state, "scheduler": scheduler.state_dict()}
    if has_state:
        if saved is not None:
            _allocate_state(optimizer)
        with _gather_groups(optimizer) as metadata:
            state["megatron"] = optimizer.sharded_state_dict(model_sharded, is_loading=saved is not None,
                                                             metadata=metadata)
    return state


def load_sharded_state_dict(optimizer, scheduler, loaded: dict) -> None:
    """Restore what `sharded_state_dict` saved (loaded at this rank's layout)."""
    if loaded["initialized"]:
        with _torch_adam_steps(optimizer):
            optimizer.load_state_dict(loaded["megatron"])
    else:
        for sub in _sub_optimizers(optimizer):
            sub.optimizer.state.clear()
    scheduler.load_state_dict(loaded["scheduler"])


@contextlib.contextmanager
def _torch_adam_steps(optimizer) -> Iterator[None]:
    """Load the distributed optimizer's state when its inner optimizer is torch's Adam (no TE / Apex).

    torch's Adam keeps `step` in every parameter's state, Megatron's loaders are written for fused
    Adams that keep it in the param groups: the fully_reshardable loader copies every state key from
    tensors that have no `step` (KeyError), and `load_state_dict` gives every parameter the same step
    tensor, which torch's Adam then increments once per parameter. During the load, the step is
    passed through unchanged; afterwards each parameter gets its own copy (the param groups' value).
    """
    subs = [sub for sub in _sub_optimizers(optimizer) if _is_distributed(sub)]
    for sub in subs:
        original = sub._set_main_param_and_optimizer_states

        def keep_step(model_param, tensors, sub=sub, original=original):
            group_index, group_order = sub.model_param_group_index_map[model_param]
            main = sub.optimizer.param_groups[group_index]["params"][group_order]
            step = sub.optimizer.state[main].get("step")
            original(model_param, tensors if step is None or "step" in tensors else {**tensors, "step": step})

        sub._set_main_param_and_optimizer_states = keep_step
    try:
        yield
    finally:
        for sub in subs:
            del sub._set_main_param_and_optimizer_states
            for state in sub.optimizer.state.values():
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].clone()


def _allocate_state(optimizer) -> None:
    """Give a fresh optimizer state tensors to load into (Megatron's loaders fill existing state).

    The distributed optimizer takes one step with zero gradients (Megatron's own way; its main shards
    change but are overwritten by the load); the others allocate in `sharded_state_dict(is_loading)`.
    """
    for sub in _sub_optimizers(optimizer):
        if _is_distributed(sub) and not len(sub.optimizer.state):
            sub._init_optimizer_states_with_dummy_values()
