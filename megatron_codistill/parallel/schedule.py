"""Drive Megatron's forward-backward schedule over a token batch split into micro-batches.

Shared by `logprobs.forward_logprobs` (forward only) and `train_step.train_step`. With PP > 1
this is Megatron's non-interleaved 1F1B pipeline schedule (P2P between stages over the layout's
pp group); with PP = 1 it is Megatron's plain micro-batch loop. Process groups come from the
layout; the global parallel_state is never read.

Two ways to cut a batch [B, T] into micro-batches (`split_micro_batches`):
- fixed, `micro_batch_size` rows: consecutive rows at the batch's length T; the last micro-batch is
  filled with copies of its first row so that every micro-batch has one shape.
- token budget, `micro_batch_tokens`: rows sorted by length (longest first) and packed greedily while
  rows x the micro-batch's longest row <= budget; each micro-batch is cut to its longest row, so
  short rollouts no longer pad to the longest of the batch. Shapes then differ between micro-batches,
  and with PP > 1 the stages first exchange each activation's shape (Megatron's variable_seq_lengths).
`seq_multiple` > 1 (16 with FP8: Transformer Engine's FP8 GEMMs need the flattened T x b leading
dimension divisible by 8 or 16) pads each micro-batch's model input length (T_m - 1) up to a multiple
of it; the padded positions are causal successors of the real ones, so no real log-prob changes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

FP8_SEQ_MULTIPLE = 16
"""seq_multiple of models with FP8 on (TE's FP8 GEMMs: leading dimension divisible by 8, 16 for some)."""


def unwrap(model):
    """The GPTModel inside DDP (or any `.module` wrappers)."""
    while hasattr(model, "module"):
        model = model.module
    return model


@dataclass
class MicroBatch:
    """One micro-batch: `tokens` [b, T_m]; its first `rows.numel()` rows are batch rows `rows`, the rest
    (fixed scheme only) are fill copies."""

    tokens: torch.Tensor
    """[b, T_m] int64."""
    rows: torch.Tensor
    """[n] int64 indices into the batch (n <= b), in the order of the micro-batch's rows."""

    @property
    def n(self) -> int:
        return self.rows.numel()


def _round_up(t: int, seq_multiple: int) -> int:
    """Length T_m of a micro-batch of `t` tokens whose model input (T_m - 1) is a multiple of seq_multiple."""
    return (math.ceil((t - 1) / seq_multiple) * seq_multiple + 1) if seq_multiple > 1 else t


def _check_lengths(lengths: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    lengths = torch.as_tensor(lengths).long().cpu()
    if lengths.shape != (tokens.shape[0],):
        raise ValueError(f"lengths must be [B]={tokens.shape[0]}, got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > tokens.shape[1]):
        raise ValueError(f"lengths must lie in [0, T={tokens.shape[1]}], got min {int(lengths.min())} "
                         f"max {int(lengths.max())}")
    return lengths


def pack_rows(lengths: torch.Tensor, budget: int, seq_multiple: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch under a token budget: longest rows first, a micro-batch takes
    rows while (its rows) x (its longest row, rounded for seq_multiple) <= budget.

    Example, budget 12: lengths [3, 6, 2, 6] -> [[1, 3], [0, 2]] (2 x 6 and 2 x 3 tokens).
    A row longer than the budget raises ValueError (rows are never split).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    groups: list[list[int]] = []
    width = 0
    for i in order:
        t = _round_up(max(int(lengths[i]), 2), seq_multiple)
        if t > budget:
            raise ValueError(f"micro_batch_tokens ({budget}) is smaller than row {i} ({int(lengths[i])} tokens, "
                             f"{t} with padding): raise micro_batch_tokens to at least the longest sequence")
        if groups and (len(groups[-1]) + 1) * width <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
            width = t
    return groups


def split_micro_batches(tokens: torch.Tensor, micro_batch_size: int, *, lengths: torch.Tensor | None = None,
                        micro_batch_tokens: int | None = None, seq_multiple: int = 1) -> list[MicroBatch]:
    """The batch `tokens` [B, T] cut into micro-batches (the module docstring says how).

    lengths: [B] tokens of each row (prompt + response; the rest is right padding), needed for the
    token budget to gain anything (None: every row counts as T long).
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1")
    if micro_batch_tokens is not None and micro_batch_tokens < 2:
        raise ValueError(f"micro_batch_tokens={micro_batch_tokens} must be >= 2 (or None for fixed micro-batches)")
    if seq_multiple < 1:
        raise ValueError(f"seq_multiple={seq_multiple} must be >= 1")
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, T] with T >= 2, got shape {tuple(tokens.shape)}")
    B, T = tokens.shape
    lengths = torch.full((B,), T) if lengths is None else _check_lengths(lengths, tokens)
    if micro_batch_tokens is None:
        groups = [list(range(s, min(s + micro_batch_size, B))) for s in range(0, B, micro_batch_size)]
        fill_to, widths = micro_batch_size, [T] * len(groups)
    else:
        groups = pack_rows(lengths, micro_batch_tokens, seq_multiple)
        fill_to, widths = 0, [max(int(lengths[g[0]]), 2) for g in groups]
    out = []
    for rows, width in zip(groups, widths):
        idx = torch.tensor(rows, dtype=torch.long)
        chunk = tokens[idx.to(tokens.device), :width]
        if len(rows) < fill_to:
            chunk = torch.cat([chunk, chunk[:1].expand(fill_to - len(rows), -1)])
        padded = _round_up(width, seq_multiple)
        if padded > width:
            chunk = torch.nn.functional.pad(chunk, (0, padded - width))
        out.append(MicroBatch(tokens=chunk, rows=idx))
    return out


def padded_tokens(micro: list[MicroBatch]) -> int:
    """Token positions the model computes for these micro-batches (fill rows and padding included)."""
    return sum(m.tokens.numel() for m in micro)


def fixed_padded_tokens(n_rows: int, n_tokens: int, micro_batch_size: int, seq_multiple: int = 1) -> int:
    """`padded_tokens` of the fixed scheme for a [n_rows, n_tokens] batch, without building it."""
    return math.ceil(n_rows / micro_batch_size) * micro_batch_size * _round_up(n_tokens, seq_multiple)


def run_schedule(model, layout, micro: list[MicroBatch], step: Callable, collect: Callable, *,
                 forward_only: bool) -> list[dict]:
    """Run `step(model, micro_tokens)` on every micro-batch through Megatron's schedule.

    step: (model, micro_tokens [b, T_m]) -> on the last stage a tuple of [b, ...] tensors (or None
    entries), elsewhere the pipeline activation. collect(result trimmed to the real rows, micro_batch)
    -> (loss scalar, metrics dict); the loss is what gets back-propagated, scaled here so that the
    sum over micro-batches (not Megatron's mean) reaches the gradients.
    Returns the metrics dicts of every micro-batch on the last stage, [] on other stages.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.utils import get_model_config

    device = _device(model)
    micro = [MicroBatch(m.tokens.to(device), m.rows) for m in micro]
    n_micro = len(micro)

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)

        def loss_func(output):
            result = tuple(None if r is None else r[: mb.n] for r in output)
            loss, metrics = collect(result, mb)
            # Megatron divides the returned loss by num_microbatches; undo it (sum convention)
            return loss * n_micro, metrics

        return step(chunk, mb.tokens), loss_func

    config = get_model_config(model)
    extra = {"pg_collection": layout.pg_collection}
    if layout.pp > 1:
        p2p_config = config
        if len({tuple(m.tokens.shape) for m in micro}) > 1:
            # activations of different shapes: each P2P transfer is preceded by its shape
            p2p_config = copy.copy(config)
            p2p_config.variable_seq_lengths = True
        extra["p2p_communicator"] = P2PCommunicator(pp_group=layout.pp_group, config=p2p_config)
    schedule = get_forward_backward_func(pp_size=layout.pp, vp_size=None)
    outputs = schedule(
        forward_step_func=forward_step, data_iterator=iter(micro), model=[model],
        num_microbatches=n_micro, seq_length=max(m.tokens.shape[1] for m in micro) - 1,
        micro_batch_size=max(m.tokens.shape[0] for m in micro), forward_only=forward_only, **extra,
    )
    return list(outputs) if layout.is_last_stage else []


def _device(model) -> torch.device:
    return next(unwrap(model).parameters()).device
