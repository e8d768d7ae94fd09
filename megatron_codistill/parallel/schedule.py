"""Drive Megatron's forward-backward schedule over a token batch split into micro-batches.

Shared by `logprobs.forward_logprobs` (forward only) and `train_step.train_step`. With PP > 1
this is Megatron's non-interleaved 1F1B pipeline schedule (P2P between stages over the layout's
pp group); with PP = 1 it is Megatron's plain micro-batch loop. Process groups come from the
layout; the global parallel_state is never read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def unwrap(model):
    """The GPTModel inside DDP (or any `.module` wrappers)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def split_micro_batches(tokens: torch.Tensor, micro_batch_size: int) -> list[tuple[torch.Tensor, slice]]:
    """[(tokens [mbs, T], rows)]: the batch cut into equal micro-batches; the last one is padded
    with copies of its first row so every micro-batch has the shape the pipeline P2P expects.
    `rows` is the slice of real rows of the batch the micro-batch covers."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1")
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, T] with T >= 2, got shape {tuple(tokens.shape)}")
    out = []
    for start in range(0, tokens.shape[0], micro_batch_size):
        chunk = tokens[start:start + micro_batch_size]
        n = chunk.shape[0]
        if n < micro_batch_size:
            chunk = torch.cat([chunk, chunk[:1].expand(micro_batch_size - n, -1)])
        out.append((chunk, slice(start, start + n)))
    return out


def run_schedule(model, layout, tokens: torch.Tensor, step: Callable, collect: Callable, *,
                 micro_batch_size: int, forward_only: bool) -> list[dict]:
    """Run `step(model, micro_tokens)` on every micro-batch through Megatron's schedule.

    step: (model, micro_tokens [mbs, T]) -> on the last stage a tuple of [mbs, ...] tensors (or None
    entries), elsewhere the pipeline activation. collect(result trimmed to the real rows, rows)
    -> (loss scalar, metrics dict); the loss is what gets back-propagated, scaled here so that the
    sum over micro-batches (not Megatron's mean) reaches the gradients.
    Returns the metrics dicts of every micro-batch on the last stage, [] on other stages.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.utils import get_model_config

    micro = split_micro_batches(tokens.to(_device(model)), micro_batch_size)
    n_micro = len(micro)

    def forward_step(data_iterator, chunk):
        micro_tokens, rows = next(data_iterator)
        n = rows.stop - rows.start

        def loss_func(output):
            result = tuple(None if r is None else r[:n] for r in output)
            loss, metrics = collect(result, rows)
            # Megatron divides the returned loss by num_microbatches; undo it (sum convention)
            return loss * n_micro, metrics

        return step(chunk, micro_tokens), loss_func

    config = get_model_config(model)
    extra = {"pg_collection": layout.pg_collection}
    if layout.pp > 1:
        extra["p2p_communicator"] = P2PCommunicator(pp_group=layout.pp_group, config=config)
    schedule = get_forward_backward_func(pp_size=layout.pp, vp_size=None)
    outputs = schedule(
        forward_step_func=forward_step, data_iterator=iter(micro), model=[model],
        num_microbatches=n_micro, seq_length=tokens.shape[1] - 1, micro_batch_size=micro_batch_size,
        forward_only=forward_only, **extra,
    )
    return list(outputs) if layout.is_last_stage else []


def _device(model) -> torch.device:
    return next(unwrap(model).parameters()).device
