"""One optimizer step of one model on a token batch with a caller-supplied per-token loss.

Loss convention (read this before writing a `loss_fn`):

    loss_fn(logprobs [b, T-1], entropy [b, T-1] or None, rows [b] int64) -> (loss scalar, metrics dict)

is called once per micro-batch; `rows` are the indices of the micro-batch's rows in the batch (this
DP rank's `tokens`), for indexing the caller's per-token tensors (advantages, masks, old log-probs,
...). With a token budget the rows of a micro-batch need not be consecutive, nor whole groups. The
log-probs always span the batch's T-1 positions (0 where a micro-batch was cut shorter). The gradient
is that of the SUM of the returned micro-batch losses, and every metric is summed over micro-batches
as well, so a loss_fn must scale its micro-batch terms as their share of the batch value; e.g. for a
token mean over the batch: `(per_token * mask[rows]).sum() / mask.sum()`, not a mean over the
micro-batch alone. Then loss and metrics do not depend on how the batch was cut.

Across DP replicas Megatron's DDP averages gradients, so the step minimises the mean over DP
ranks of their batch losses (for a token mean over the global batch, divide by the global token
count and multiply by dp). TP/PP ranks of one replica pass the same `tokens`; each DP rank its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_codistill.parallel.logprobs import model_logprobs
from megatron_codistill.parallel.schedule import (
    fixed_padded_tokens,
    padded_tokens,
    run_schedule,
    split_micro_batches,
    unwrap,
)


def train_step(model, optimizer, layout, tokens: torch.Tensor, loss_fn, *, micro_batch_size: int,
               scheduler=None, with_entropy: bool = False, lengths: torch.Tensor | None = None,
               micro_batch_tokens: int | None = None, seq_multiple: int = 1,
               batch_metrics: dict | None = None) -> dict:
    """Forward + backward over micro-batches (1F1B when PP > 1), DP grad sync, clipped step.

    model / optimizer / scheduler: from `build_optimizer` (model is the DDP wrapper); tokens: [B, T]
    int64 (moved to the model's device). Micro-batches: `schedule.split_micro_batches` (lengths [B],
    micro_batch_tokens, seq_multiple). batch_metrics: scalars of the whole batch computed before the
    step (same on the TP/PP ranks of a replica), reported with the loss_fn metrics. A loss_fn metric
    named "loss" is replaced by the batch loss.
    Returns, identical on every rank: "loss" (sum of the micro-batch losses = batch loss), each
    loss_fn metric (summed over micro-batches) and batch metric, all averaged over DP replicas;
    "grad_norm" (global norm before clipping), "lr" (used by this step), "update_ok" (1.0 unless a
    loss scaler skipped the step), "num_zeros" (zero grads, -1 if not counted); with `lengths`,
    "pad_frac" (padded share of the token positions computed, over all DP replicas) and
    "pad_frac_fixed" (the same for fixed micro-batches of micro_batch_size rows).
    """
    vocab_size = unwrap(model).arch.vocab_size
    T1 = tokens.shape[1] - 1
    micro = split_micro_batches(tokens, micro_batch_size, lengths=lengths, micro_batch_tokens=micro_batch_tokens,
                                seq_multiple=seq_multiple)
    model.zero_grad_buffer()
    optimizer.zero_grad()

    def step(chunk, micro_tokens):
        return model_logprobs(chunk, micro_tokens[:, :-1], micro_tokens[:, 1:], layout, vocab_size,
                              with_entropy)

    def collect(result, mb):
        logp, entropy = (None if r is None else _width(r, T1) for r in result)
        loss, metrics = loss_fn(logp, entropy, mb.rows.to(logp.device))
        metrics = {k: torch.as_tensor(v, dtype=torch.float32).detach() for k, v in metrics.items()}
        return loss, {**metrics, "loss": loss.detach().float()}

    outputs = run_schedule(model, layout, micro, step, collect, forward_only=False)
    lr = optimizer.param_groups[0]["lr"]
    update_ok, grad_norm, num_zeros = optimizer.step()
    if scheduler is not None:
        scheduler.step(increment=1)
    metrics = _reduce_metrics(outputs, layout, batch_metrics or {})
    if lengths is not None:
        real = int(torch.as_tensor(lengths).sum())
        fixed = fixed_padded_tokens(tokens.shape[0], tokens.shape[1], micro_batch_size, seq_multiple)
        metrics.update(_pad_fractions(layout, real, padded_tokens(micro), fixed))
    metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=float(lr),
                   update_ok=float(bool(update_ok)),
                   num_zeros=float(num_zeros) if num_zeros is not None else -1.0)
    return metrics


def _width(x: torch.Tensor, t: int) -> torch.Tensor:
    """[b, T_m - 1] -> [b, t]: zero-padded (differentiably) or cut (FP8 padding past the batch)."""
    return F.pad(x, (0, t - x.shape[1])) if x.shape[1] < t else x[:, :t]


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None


def _reduce_metrics(outputs: list[dict], layout, batch_metrics: dict) -> dict:
    """Sums over micro-batches; broadcast from the last stage; DP mean."""
    keys = sorted(outputs[0]) if outputs else None
    keys_box = [keys]
    if layout.pp > 1:
        dist.broadcast_object_list(keys_box, src=layout.last_stage_rank, group=layout.pp_group)
    step_keys = keys_box[0]
    clash = set(step_keys) & set(batch_metrics)
    if clash:
        raise ValueError(f"batch_metrics and loss_fn metrics share the names {sorted(clash)}")
    keys = step_keys + sorted(batch_metrics)
    values = torch.zeros(len(keys), dtype=torch.float64, device=_device())
    if layout.is_last_stage:
        for i, key in enumerate(step_keys):
            values[i] = torch.stack([o[key].double().to(values.device) for o in outputs]).sum()
    for i, key in enumerate(sorted(batch_metrics), start=len(step_keys)):
        values[i] = float(batch_metrics[key])
    if layout.pp > 1:
        dist.broadcast(values, src=layout.last_stage_rank, group=layout.pp_group)
    if layout.dp > 1:
        dist.all_reduce(values, group=layout.dp_group)
        values /= layout.dp
    return dict(zip(keys, values.tolist()))


def _pad_fractions(layout, real: int, computed: int, computed_fixed: int) -> dict[str, float]:
    counts = torch.tensor([real, computed, computed_fixed], dtype=torch.float64, device=_device())
    if layout.dp > 1:
        dist.all_reduce(counts, group=layout.dp_group)
    real_t, comp, fixed = counts.tolist()
    return {"pad_frac": 1.0 - real_t / max(comp, 1.0), "pad_frac_fixed": 1.0 - real_t / max(fixed, 1.0)}
