"""Memory per GPU of one model's training shard and of a rollout engine, in bytes.

Conventions (Megatron-Core with bf16 parameters; legend: T tokens of one micro-batch = micro batch
size x sequence length, h hidden, q = heads * head_dim, kv = kv_heads * head_dim, F ffn width):

- weights: 2 bytes per parameter of the shard (bf16; fp32 runs: 4).
- gradients: 4 bytes per parameter (fp32 `main_grad` buffers, Megatron's default for bf16).
- optimizer: Adam's fp32 master copy, exp_avg and exp_avg_sq = 12 bytes per parameter (fp32 runs: 8,
  no master copy), divided by the data-parallel size with the distributed optimizer.
- activations kept for backward per layer and token, bf16, sequence parallel when TP > 1 (so every
  term shards by TP), flash attention (no T x T scores), no dropout:
  attention: norm input h, QKV input h, Q q, K kv, V kv, attention output q;
  SwiGLU MLP: norm input h, FC1 input h, gate+up 2F, FC2 input F.
  That is (4h + 2q + 2kv + 3F) elements = (8h + 4q + 4kv + 6F) bytes per token per layer, / TP.
  Recompute follows the model config (`Recompute`, Megatron-Core's options): full recompute, method
  uniform with k layers per chunk, keeps each chunk's input (2h bytes per token, / TP) plus the k
  layers' full set while a chunk is recomputed; method block with k layers keeps the inputs of the
  first k layers of a stage, the full set of the others, and one layer's while it is recomputed.
  Selective recompute (core attention) frees nothing here: with flash attention its saved Q, K, V are
  the checkpoint's own inputs and its output is the next projection's input (it frees the T x T
  scores of unfused attention, which this model does not count). The last pipeline stage also holds
  one micro-batch of logits, bf16 plus the
  fp32 softmax of the vocab-parallel cross entropy: 6 bytes x V_pad / TP per token.
  With 1F1B, stage k holds min(PP - k, micro-batches) micro-batches in flight; stage 0 holds most.
- KV cache: K and V (2) x layers x kv heads per GPU x head_dim x 2 bytes per token; an engine with
  TP above the number of KV heads replicates them (SGLang does), so a GPU holds max(1, kv_heads / TP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_codistill.models.arch import ModelArch

BF16 = 2
RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Recompute:
    """Activation recompute as a model config sets it (ModelConfig.recompute, recompute_method,
    recompute_num_layers; method and layers matter for "full" only)."""

    granularity: str = "none"
    """none | selective | full."""
    method: str | None = None
    """uniform (default) | block."""
    num_layers: int | None = None
    """Layers per chunk (uniform, default 1) or recomputed layers per stage (block, default all)."""

    def __post_init__(self) -> None:
        if self.granularity not in RECOMPUTE:
            raise ValueError(f"recompute {self.granularity!r} is not valid; valid: {list(RECOMPUTE)}")
        if self.method not in (None, "uniform", "block"):
            raise ValueError(f"recompute_method {self.method!r} is not valid; valid: ['uniform', 'block']")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"recompute_num_layers ({self.num_layers}) must be >= 1")

    @property
    def full(self) -> bool:
        """Whole layers run forward again in the backward pass."""
        return self.granularity == "full"

    def describe(self) -> str:
        if not self.full or (self.method in (None, "uniform") and self.num_layers in (None, 1)):
            return self.granularity
        return f"full ({self.method or 'uniform'}, {self.num_layers or 'all'} layers)"

    def layer_counts(self, layers: int) -> tuple[int, int, int]:
        """For a stage of `layers` layers: (checkpointed layer inputs, layers keeping every activation)
        per micro-batch in flight, and the layers whose activations exist at once while recomputed."""
        if not self.full:
            return 0, layers, 0
        if self.method == "block":
            k = min(self.num_layers or layers, layers)
            return k, layers - k, 1 if k else 0
        k = min(self.num_layers or 1, layers)
        return math.ceil(layers / k), 0, k


def as_recompute(value: bool | str | Recompute) -> Recompute:
    """True = full (uniform, one layer per chunk), False = none, a name, or a Recompute as it is."""
    if isinstance(value, Recompute):
        return value
    if isinstance(value, bool):
        return Recompute("full" if value else "none")
    return Recompute(value)


@dataclass(frozen=True)
class ShardMemory:
    """Bytes on one GPU for one model's training shard (the pipeline stage that needs most)."""

    stage: int
    """Pipeline stage these figures are for."""
    params: int
    """Parameters of the shard."""
    weights: float
    gradients: float
    optimizer: float
    activations: float
    """Activations at the peak of the backward pass (with the chosen recompute)."""
    activations_no_recompute: float
    activations_full_recompute: float

    @property
    def static(self) -> float:
        """Weights + gradients + optimizer: resident for the whole step."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.static + self.activations


def layer_parameters(arch: ModelArch, tp: int) -> int:
    """Parameters of one transformer layer held by one TP rank (norms are replicated)."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    sharded = h * (q + 2 * kv) + q * h + 3 * h * arch.ffn_hidden_size
    if arch.qkv_bias:
        sharded += q + 2 * kv
    return sharded // tp + 2 * h


def stage_parameters(arch: ModelArch, tp: int, pp: int, stage: int) -> int:
    """Parameters on one GPU of pipeline `stage` (embedding on the first stage, head + final norm on the
    last; with tied embeddings and PP > 1 the last stage keeps its own copy of the embedding)."""
    if not 0 <= stage < pp:
        raise ValueError(f"stage={stage} must be in [0, {pp})")
    vocab_shard = arch.padded_vocab_size(tp) * arch.hidden_size // tp
    n = arch.num_layers // pp * layer_parameters(arch, tp)
    if stage == 0:
        n += vocab_shard
    if stage == pp - 1:
        n += arch.hidden_size  # final norm
        if not arch.tie_word_embeddings or pp > 1:
            n += vocab_shard
    return n


def activation_bytes_per_token_layer(arch: ModelArch, tp: int) -> float:
    """Bytes kept for backward per token and layer without recompute (see module docstring)."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    return (8 * h + 4 * q + 4 * kv + 6 * arch.ffn_hidden_size) / tp


def stage_activations(arch: ModelArch, *, tp: int, pp: int, stage: int, tokens: int, in_flight: int,
                      recompute: bool | str | Recompute) -> float:
    """Activation bytes at the backward peak of `stage`, `tokens` per micro-batch, `in_flight` of them."""
    inputs, whole, at_once = as_recompute(recompute).layer_counts(arch.num_layers // pp)
    full = activation_bytes_per_token_layer(arch, tp) * tokens
    layer_input = BF16 * arch.hidden_size / tp * tokens
    kept = in_flight * (inputs * layer_input + whole * full) + at_once * full
    if stage == pp - 1:
        kept += 6 * arch.padded_vocab_size(tp) / tp * tokens
    return kept


def shard_memory(arch: ModelArch, *, tp: int, pp: int, dp: int, micro_batch: int, seq_len: int,
                 micro_batches: int, recompute: bool | str | Recompute, distributed_optimizer: bool = True,
                 dtype: str = "bf16") -> ShardMemory:
    """Training memory of the busiest pipeline stage of `arch` under TP x PP x DP.

    micro_batches: micro-batches per optimizer step on one data-parallel rank (bounds the 1F1B depth).
    recompute: the model's choice (`as_recompute`). dtype: "bf16" (mixed precision, fp32 master
    weights) or "fp32".
    """
    chosen = as_recompute(recompute)
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype {dtype!r} is not supported; valid: ['bf16', 'fp32']")
    w_bytes, opt_bytes = (2, 12) if dtype == "bf16" else (4, 8)
    opt_shards = dp if distributed_optimizer else 1
    tokens = micro_batch * seq_len
    best = None
    for stage in sorted({0, pp - 1}):
        params = stage_parameters(arch, tp, pp, stage)
        in_flight = min(pp - stage, micro_batches)
        acts = {r: stage_activations(arch, tp=tp, pp=pp, stage=stage, tokens=tokens, in_flight=in_flight,
                                     recompute=r) for r in (Recompute("none"), Recompute("full"), chosen)}
        mem = ShardMemory(
            stage=stage, params=params, weights=w_bytes * params, gradients=4 * params,
            optimizer=opt_bytes * params / opt_shards, activations=acts[chosen],
            activations_no_recompute=acts[Recompute("none")], activations_full_recompute=acts[Recompute("full")],
        )
        if best is None or mem.total > best.total:
            best = mem
    return best


def kv_bytes_per_token(arch: ModelArch, tp: int) -> float:
    """KV-cache bytes per token on one GPU of an engine with tensor parallel size `tp` (bf16)."""
    heads_per_gpu = max(1.0, arch.num_key_value_heads / tp)
    return 2 * arch.num_layers * heads_per_gpu * arch.head_dim * BF16


def engine_weight_bytes(arch: ModelArch, tp: int) -> float:
    """bf16 weights of one engine GPU (full model split over `tp`; norms replicated, ignored)."""
    return BF16 * arch.num_parameters() / tp
