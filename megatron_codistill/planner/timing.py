"""Step time by phase: rollout generation, scoring, the two updates and the weight sync.

One synchronous CoDistill step (DESIGN §2): the small model generates P x G rollouts; both models
score them (forward, no gradient); the small model, then the large model, update; the small model's
new weights go to the rollout engine. Legend: N matmul parameters (layers + LM head; the embedding
lookup is no matmul), T tokens, P prompts, G group size.

- generate: decoding is memory-bandwidth bound. Each decode step of an engine GPU reads its weight
  shard once plus the KV cache of every running sequence, and does 2 N / TP FLOPs per sequence; its
  time is the larger of bytes / (HBM bandwidth x efficiency) and FLOPs / (peak x MFU) (a roofline).
  Every rollout decodes `response_len` tokens; the mean context is prompt + response / 2. Sequences
  beyond what the KV cache holds run in further waves. Prefill: 2 N x prompt tokens at MFU, once per
  prompt (the G samples share the prompt's cache, as SGLang's radix cache does).
- score: a forward pass, 2 N T + attention FLOPs, at MFU over all trainer GPUs.
- update: forward + backward, 6 N T (8 N T with full recompute: one more forward) + attention,
  at MFU over all trainer GPUs; pipeline parallelism adds the 1F1B bubble (PP - 1) / m for m
  micro-batches per data-parallel rank.
- communication (not overlapped with compute, a conservative choice): tensor parallel with sequence
  parallelism does 4 all-gathers / reduce-scatters of T x h bf16 per layer and pass (forward, backward,
  the recompute forward), each moving (TP - 1) / TP of it per GPU over NVLink; the data-parallel
  gradient reduce-scatter (fp32) and parameter all-gather (bf16) move (DP - 1) / DP x 6 bytes per
  parameter of the shard (an fp32 all-reduce, 8 bytes, without the distributed optimizer), over
  NVLink inside a node and the network across nodes.
- sync: bf16 weights of the small model over the link to the engine (network for dedicated rollout
  GPUs, device memory for colocated engines).
Attention FLOPs (causal, mean context s / 2): 4 x layers x q_dim x s / 2 per token forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_codistill.models.arch import ModelArch


def matmul_parameters(arch: ModelArch) -> int:
    """N in the 2N / 6N rules: every parameter that multiplies an activation (layers + LM head)."""
    lookup_only = 0 if arch.tie_word_embeddings else arch.vocab_size * arch.hidden_size
    return arch.num_parameters() - lookup_only


def attention_flops_per_token(arch: ModelArch, seq_len: int) -> float:
    """Forward FLOPs of the score and value products for one token of a causal sequence."""
    q_dim = arch.num_attention_heads * arch.head_dim
    return 4 * arch.num_layers * q_dim * seq_len / 2


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak the estimates assume (calibrate them against a measured run)."""

    mfu: float = 0.4
    """Model FLOPs utilisation of training and scoring matmuls."""
    decode_bw: float = 0.6
    """Fraction of HBM bandwidth that decoding achieves."""
    decode_mfu: float = 0.3
    """FLOPs utilisation of decode and prefill matmuls."""
    comm: float = 0.8
    """Fraction of link bandwidth that collectives achieve."""


def train_time(arch: ModelArch, *, tokens: int, seq_len: int, gpus: int, peak_flops: float, mfu: float,
               backward: bool, recompute: bool = False, pp: int = 1, micro_batches: int = 1) -> float:
    """Seconds of one forward (backward=False) or forward+backward pass over `tokens` on `gpus`."""
    passes = (4 if recompute else 3) if backward else 1  # in units of one forward
    flops = passes * (2 * matmul_parameters(arch) + attention_flops_per_token(arch, seq_len)) * tokens
    bubble = 1 + (pp - 1) / max(micro_batches, 1)
    return flops / (gpus * peak_flops * mfu) * bubble


def decode_time(arch: ModelArch, *, sequences: int, prompts: int, prompt_len: int, response_len: int,
                concurrency: int, tp: int, weight_bytes: float, kv_bytes_token: float, hbm_bytes_s: float,
                peak_flops: float, eff: Efficiency) -> tuple[float, int]:
    """(seconds, waves) for one engine replica to generate `sequences` rollouts of `response_len`.

    concurrency: sequences the KV cache holds at once (>= 1). weight_bytes, kv_bytes_token: per GPU.
    """
    waves = math.ceil(sequences / concurrency)
    batch = min(concurrency, sequences)
    ctx = prompt_len + response_len / 2
    n = matmul_parameters(arch)
    bytes_step = weight_bytes + batch * ctx * kv_bytes_token
    flops_step = batch * (2 * n + attention_flops_per_token(arch, 2 * ctx)) / tp
    step = max(bytes_step / (hbm_bytes_s * eff.decode_bw), flops_step / (peak_flops * eff.decode_mfu))
    prefill = prompts * prompt_len * (2 * n + attention_flops_per_token(arch, prompt_len)) / tp
    return waves * response_len * step + prefill / (peak_flops * eff.decode_mfu), waves


def tp_comm_time(arch: ModelArch, *, tokens_per_dp: int, tp: int, pp: int, passes: int,
                 link_bytes_s: float) -> float:
    """Seconds of sequence-parallel TP collectives of one GPU for `passes` passes over its layers."""
    if tp == 1:
        return 0.0
    volume = passes * (arch.num_layers // pp) * 4 * (tp - 1) / tp * tokens_per_dp * arch.hidden_size * 2
    return volume / link_bytes_s


def dp_comm_time(params: int, *, dp: int, distributed_optimizer: bool, link_bytes_s: float) -> float:
    """Seconds of one gradient reduction (+ parameter gather) of a `params`-parameter shard over `dp`."""
    if dp == 1:
        return 0.0
    per_param = 6 if distributed_optimizer else 8
    return per_param * params * (dp - 1) / dp / link_bytes_s


SCHEDULES = ("sequential", "overlap", "async")


def schedule_step_time(times: dict[str, float], schedule: str, *, colocated: bool = False) -> float:
    """Step time of the phase `times` (generate, score, update_small, update_large, sync; others add up)
    under a `scheduler.mode`, as trainer/scheduler.py orders them:

    - sequential: the sum;
    - overlap: generation of step t+1 runs during the large update of step t, so
      generate + update_large count as max(generate, update_large);
    - async (k >= 1): generation runs during the whole training part of the step:
      max(generate, everything else).
    Colocated engines share the trainer's GPUs: nothing overlaps, every schedule costs the sum.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not valid; valid: {list(SCHEDULES)}")
    total = sum(times.values())
    gen, large = times.get("generate", 0.0), times.get("update_large", 0.0)
    if colocated or schedule == "sequential":
        return total
    if schedule == "overlap":
        return total - gen - large + max(gen, large)
    return max(gen, total - gen)

