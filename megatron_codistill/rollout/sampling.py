"""Token sampling for in-process engines: temperature, joint top-k / top-p, greedy.

Legend: R rows being decoded, V vocab.

The behaviour distribution q of one decoding step is built from the logits l [R, V]:

    p = softmax(l / T)
    keep(v) = rank(v) < k  and  sum_{u ranked before v} p(u) <= top_p
    q(v) = p(v) * keep(v) / sum_u p(u) * keep(u)

i.e. top-k and top-p are applied jointly on the temperature-scaled distribution (the nucleus is
measured on p, not on p renormalised after top-k), then renormalised. This is the rule of SGLang's
torch sampler (`top_k_top_p_min_p_sampling_from_probs_torch`, SGLang 0.5.23), so both engines draw
from the same q. HF's `TopKLogitsWarper` + `TopPLogitsWarper` chain instead measures the nucleus
after top-k renormalisation; the two agree whenever only one of the filters is active.

Greedy (T = 0) takes the argmax and reports log softmax(l) (temperature 1) as its log-prob, which
is also what SGLang returns for greedy requests; q itself would be a point mass (log-prob 0).
"""

from __future__ import annotations

import torch


def behaviour_logprobs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log q [R, V] (float32) for T > 0; -inf outside the kept support. See the module docstring."""
    if temperature <= 0:
        raise ValueError(f"behaviour_logprobs needs temperature > 0, got {temperature}; use greedy()")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    V = logp.shape[-1]
    use_k = 0 < top_k < V
    use_p = top_p < 1.0
    if not (use_k or use_p):
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True, stable=True)
    keep_sorted = torch.ones_like(sorted_logp, dtype=torch.bool)
    if use_k:
        keep_sorted[:, top_k:] = False
    if use_p:
        p = sorted_logp.exp()
        mass_before = torch.cumsum(p, dim=-1) - p  # exclusive prefix sum: the top token is always kept
        keep_sorted &= mass_before <= top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    masked = logp.masked_fill(~keep, float("-inf"))
    return masked - torch.logsumexp(masked, dim=-1, keepdim=True)


def sample(logq: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from q = exp(logq). Returns (tokens [R] int64, log q(token) [R])."""
    tokens = torch.multinomial(logq.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logq.gather(-1, tokens[:, None]).squeeze(-1)


def greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax per row and its temperature-1 log-prob (see the module docstring)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    tokens = logp.argmax(dim=-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def next_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step for logits [R, V]: (tokens [R], behaviour log-probs [R])."""
    if temperature == 0:
        return greedy(logits)
    return sample(behaviour_logprobs(logits, temperature, top_k, top_p), generator)
