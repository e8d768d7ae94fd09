"""One optimizer step of one model on a token batch with a caller-supplied per-token loss.

Loss convention (read this before writing a `loss_fn`):

    loss_fn(logprobs [b, T-1], entropy [b, T-1] or None, rows) -> (loss scalar, metrics dict)

is called once per micro-batch; `rows` is the slice of the batch (this DP rank's `tokens`) that
the micro-batch covers, for indexing the caller's per-token tensors (advantages, masks, old
log-probs, ...). The gradient is that of the SUM of the returned micro-batch losses, so a loss_fn
must scale its micro-batch term as its share of the batch loss; e.g. for a token mean over the
batch: `(per_token * mask[rows]).sum() / mask.sum()`, not a mean over the micro-batch alone.

Across DP replicas Megatron's DDP averages gradients, so the step minimises the mean over DP
ranks of their batch losses (for a token mean over the global batch, divide by the global token
count and multiply by dp). TP/PP ranks of one replica pass the same `tokens`; each DP rank its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_codistill.parallel.logprobs import model_logprobs
from megatron_codistill.parallel.schedule import run_schedule, unwrap


def train_step(model, optimizer, layout, tokens: torch.Tensor, loss_fn, *, micro_batch_size: int,
               scheduler=None, with_entropy: bool = False) -> dict:
    """Forward + backward over micro-batches (1F1B when PP > 1), DP grad sync, clipped step.

    model / optimizer / scheduler: from `build_optimizer` (model is the DDP wrapper); tokens: [B, T]
    int64 (moved to the model's device). A loss_fn metric named "loss" is replaced by the batch loss.
    Returns, identical on every rank: "loss" (sum of the micro-batch losses = batch loss),
    each loss_fn metric (mean over micro-batches), both averaged over DP replicas; "grad_norm"
    (global norm before clipping), "lr" (used by this step), "update_ok" (1.0 unless a loss
    scaler skipped the step), "num_zeros" (zero grads, -1 if not counted).
    """
    vocab_size = unwrap(model).arch.vocab_size
    model.zero_grad_buffer()
    optimizer.zero_grad()

    def step(chunk, micro_tokens):
        return model_logprobs(chunk, micro_tokens[:, :-1], micro_tokens[:, 1:], layout, vocab_size,
                              with_entropy)

    def collect(result, rows):
        loss, metrics = loss_fn(result[0], result[1], rows)
        metrics = {k: torch.as_tensor(v, dtype=torch.float32).detach() for k, v in metrics.items()}
        return loss, {**metrics, "loss": loss.detach().float()}

    outputs = run_schedule(model, layout, tokens, step, collect, micro_batch_size=micro_batch_size,
                           forward_only=False)
    lr = optimizer.param_groups[0]["lr"]
    update_ok, grad_norm, num_zeros = optimizer.step()
    if scheduler is not None:
        scheduler.step(increment=1)
    metrics = _reduce_metrics(outputs, layout)
    metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=float(lr),
                   update_ok=float(bool(update_ok)),
                   num_zeros=float(num_zeros) if num_zeros is not None else -1.0)
    return metrics


def _reduce_metrics(outputs: list[dict], layout) -> dict:
    """Sum of micro-batch losses, mean of other metrics; broadcast from the last stage; DP mean."""
    keys = sorted(outputs[0]) if outputs else None
    keys_box = [keys]
    if layout.pp > 1:
        dist.broadcast_object_list(keys_box, src=layout.last_stage_rank, group=layout.pp_group)
    keys = keys_box[0]
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    values = torch.zeros(len(keys), dtype=torch.float64, device=device)
    if layout.is_last_stage:
        for i, key in enumerate(keys):
            stacked = torch.stack([o[key].double().to(values.device) for o in outputs])
            values[i] = stacked.sum() if key == "loss" else stacked.mean()
    if layout.pp > 1:
        dist.broadcast(values, src=layout.last_stage_rank, group=layout.pp_group)
    if layout.dp > 1:
        dist.all_reduce(values, group=layout.dp_group)
        values /= layout.dp
    return dict(zip(keys, values.tolist()))
