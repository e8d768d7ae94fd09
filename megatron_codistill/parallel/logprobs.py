"""Per-token log-probs (and entropy) from vocab-parallel logits, for any model layout.

`vocab_parallel_logprobs` is the math: each TP rank holds logits for a contiguous slice of the
(padded) vocabulary, and
    log p(y) = z_y - m - log sum_v exp(z_v - m),   m = max_v z_v,
with the max, the sum and the target logit z_y reduced over the TP group. Columns >= vocab_size
(Megatron's vocab padding) are excluded. The result is replicated on every TP rank; its backward
is local to each rank's slice (Megatron's convention: the loss is computed identically on every TP
rank, each rank back-propagates into its own shard).

`forward_logprobs` runs a model (any TP x PP) over a token batch through Megatron's schedule
(forward only) and returns the log-probs on every rank of the model group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_codistill.parallel.schedule import run_schedule, split_micro_batches, unwrap


class _VocabParallelLogProbs(torch.autograd.Function):
    """logits [..., V/tp] (this rank's slice) -> (log p(target) [...], entropy [...] or empty)."""

    @staticmethod
    def forward(ctx, logits, targets, tp_group, vocab_size, with_entropy):
        # Peak memory: the input, `shifted` and `probs` ([..., V/tp] fp32 each); in place below.
        part = logits.shape[-1]
        start = dist.get_rank(tp_group) * part
        padded = torch.arange(start, start + part, device=logits.device) >= vocab_size
        shifted = logits.float().masked_fill(padded, float("-inf"))  # a new tensor: safe in place
        m = shifted.max(dim=-1, keepdim=True).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
        shifted -= m  # z - m, -inf on padded columns
        probs = shifted.exp()
        sum_exp = probs.sum(dim=-1, keepdim=True)
        dist.all_reduce(sum_exp, group=tp_group)
        probs /= sum_exp
        log_z = sum_exp.log().squeeze(-1)

        local_t = targets - start
        in_range = (local_t >= 0) & (local_t < part)
        local_t = local_t.clamp(0, part - 1)
        z_t = shifted.gather(-1, local_t.unsqueeze(-1)).squeeze(-1)
        z_t = torch.where(in_range, z_t, torch.zeros_like(z_t))  # -inf * 0 would be nan
        dist.all_reduce(z_t, group=tp_group)
        logp = z_t - log_z

        entropy = torch.empty(0, device=logits.device)
        if with_entropy:
            # H = log Z - sum_v p_v (z_v - m); padded columns have p = 0 (use 0 for their z - m)
            p_shift = torch.linalg.vecdot(probs, shifted.masked_fill_(padded, 0.0))
            dist.all_reduce(p_shift, group=tp_group)
            entropy = log_z - p_shift
        ctx.save_for_backward(probs, local_t, in_range, entropy)
        ctx.with_entropy = with_entropy
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        probs, local_t, in_range, entropy = ctx.saved_tensors
        # d log p(y) / d z_v = 1[v = y] - p_v
        grad = -probs * grad_logp.unsqueeze(-1)
        grad.scatter_add_(-1, local_t.unsqueeze(-1), (in_range * grad_logp).unsqueeze(-1))
        if ctx.with_entropy and grad_entropy is not None:
            # d H / d z_v = -p_v (log p_v + H); xlogy gives 0 log 0 = 0 on padded columns
            grad -= (torch.special.xlogy(probs, probs) + probs * entropy.unsqueeze(-1)) * grad_entropy.unsqueeze(-1)
        return grad, None, None, None, None


def vocab_parallel_logprobs(logits: torch.Tensor, targets: torch.Tensor, tp_group, vocab_size: int,
                            with_entropy: bool = False):
    """log p(targets) from this rank's vocab slice of the logits.

    logits: [B, T, V_pad/tp] (any leading shape); targets: [B, T] int64 global token ids < vocab_size.
    Returns logprobs [B, T] float32, or (logprobs, entropy) [B, T] each when `with_entropy`
    (entropy over the true vocabulary, in nats). Autograd-correct for both outputs.
    """
    logp, entropy = _VocabParallelLogProbs.apply(logits, targets, tp_group, vocab_size, with_entropy)
    return (logp, entropy) if with_entropy else logp


def model_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor, layout, vocab_size: int,
                   with_entropy: bool):
    """One forward of `model` on inputs [b, T'] -> (logprobs [b, T'], entropy or None) on the last
    stage; on other stages the pipeline activation. Positions 0..T'-1, causal mask implied."""
    positions = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0).expand_as(inputs)
    out = model(inputs, positions, None)
    if not layout.is_last_stage:
        return out
    result = vocab_parallel_logprobs(out, targets, layout.tp_group, vocab_size, with_entropy)
    return result if with_entropy else (result, None)


@torch.no_grad()
def forward_logprobs(model, layout, tokens: torch.Tensor, *, micro_batch_size: int,
                     with_entropy: bool = False, lengths: torch.Tensor | None = None,
                     micro_batch_tokens: int | None = None, seq_multiple: int = 1):
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for a batch, on every rank of the model group.

    model: this rank's (DDP-wrapped or bare) GPTModel chunk; layout: its ModelLayout; tokens:
    [B, T] int64, identical on the TP/PP ranks of one DP replica. Right padding is harmless (the
    model is causal; mask the padded positions downstream). Returns logprobs [B, T-1] float32, or
    (logprobs, entropy) when `with_entropy`. Micro-batches: `schedule.split_micro_batches` (lengths
    [B], micro_batch_tokens, seq_multiple); with a token budget, positions past a row's micro-batch
    are 0. Always fp32: the softmax of bf16 logits runs in fp32 (`vocab_parallel_logprobs`).
    """
    vocab_size = unwrap(model).arch.vocab_size

    def step(chunk, micro_tokens):
        return model_logprobs(chunk, micro_tokens[:, :-1], micro_tokens[:, 1:], layout, vocab_size,
                              with_entropy)

    def collect(result, mb):
        logp, entropy = result
        return logp.sum() * 0.0, {"logprobs": logp, "entropy": entropy, "rows": mb.rows}

    micro = split_micro_batches(tokens, micro_batch_size, lengths=lengths, micro_batch_tokens=micro_batch_tokens,
                                seq_multiple=seq_multiple)
    outputs = run_schedule(model, layout, micro, step, collect, forward_only=True)
    b, t = tokens.shape[0], tokens.shape[1] - 1
    n_out = 2 if with_entropy else 1
    device = next(unwrap(model).parameters()).device
    result = torch.zeros(n_out, b, t, dtype=torch.float32, device=device)
    if layout.is_last_stage:
        for o in outputs:
            rows, width = o["rows"].to(device), min(o["logprobs"].shape[1], t)
            result[0, rows, :width] = o["logprobs"][:, :width].float()
            if with_entropy:
                result[1, rows, :width] = o["entropy"][:, :width].float()
    if layout.pp > 1:
        dist.broadcast(result, src=layout.last_stage_rank, group=layout.pp_group)
    return (result[0], result[1]) if with_entropy else result[0]
