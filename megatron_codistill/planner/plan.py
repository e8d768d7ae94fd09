"""Enumerate the large model's TP x PP x DP layouts for a model pair on a GPU cluster.

Layout (DESIGN §4): every trainer GPU holds a TP x PP shard of the large model (large DP = trainer
GPUs / (TP x PP)) and a full replica of the small model (small DP = trainer GPUs). The rollout engine
serves the small model either on the trainer GPUs (colocated: its weights and KV cache share the
memory left by training) or on `rollout_gpus` GPUs of their own (SGLang servers of `rollout_tp`).
Each layout gets every reason it is invalid, or its memory per role and its step time by phase;
valid layouts are ranked by step time (then by memory headroom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_codistill.models.arch import ModelArch
from megatron_codistill.planner.hardware import GIB, GPUSpec
from megatron_codistill.planner.memory import (
    Recompute,
    ShardMemory,
    as_recompute,
    engine_weight_bytes,
    kv_bytes_per_token,
    shard_memory,
)
from megatron_codistill.planner.timing import (
    Efficiency,
    decode_time,
    dp_comm_time,
    schedule_step_time,
    tp_comm_time,
    train_time,
)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for. Lengths in tokens; memory in GiB."""

    small: ModelArch
    large: ModelArch
    gpu: GPUSpec
    num_gpus: int
    """All GPUs of the job (trainer + dedicated rollout GPUs)."""
    small_name: str = "small"
    large_name: str = "large"
    gpus_per_node: int = 8
    """GPUs per node; tensor parallelism stays inside a node."""
    rollout_gpus: int = 0
    """GPUs that only serve rollouts (SGLang); 0 = the engine is colocated on the trainer GPUs."""
    rollout_tp: int = 1
    """Tensor parallel size of each rollout engine replica."""
    prompt_len: int = 512
    response_len: int = 2048
    """Tokens generated per rollout (every rollout is taken to reach it: a worst case)."""
    prompts_per_step: int = 32
    group_size: int = 8
    micro_batch_large: int = 1
    micro_batch_small: int = 1
    precision: str = "bf16"
    """Matmul precision for the peak FLOP/s: bf16 or fp8 (memory stays bf16 either way)."""
    distributed_optimizer: bool = True
    recompute: str | Recompute = "auto"
    """The large model's: none | selective | full (or a Recompute with method and layers, as a run config
    sets it) | auto (no recompute when it fits, else full)."""
    small_recompute: str | Recompute | None = None
    """The small model's; None = the large model's choice."""
    schedule: str = "overlap"
    """The step schedule (scheduler.mode): sequential | overlap | async (timing.schedule_step_time)."""
    reserve_gib: float = 5.0
    """Per-GPU memory kept for the CUDA context, NCCL buffers and fragmentation."""
    engine_mem_fraction: float = 0.85
    """Share of a dedicated rollout GPU the engine may use for weights + KV cache."""
    sync_gbs: float = 25.0
    """Bandwidth (GB/s) of the small model's weight push to dedicated rollout GPUs."""
    network_gbs: float = 50.0
    """Inter-node bandwidth per GPU, GB/s (400 Gb/s per GPU: 50)."""
    efficiency: Efficiency = field(default_factory=Efficiency)

    @property
    def trainer_gpus(self) -> int:
        return self.num_gpus - self.rollout_gpus

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len


@dataclass
class LayoutPlan:
    """One TP x PP x DP layout of the large model: its invalidity reasons or its estimates (bytes, s)."""

    tp: int
    pp: int
    dp: int
    reasons: list[str] = field(default_factory=list)
    recompute: bool = False
    """Whole layers are recomputed (an extra forward pass in the update time)."""
    recompute_choice: str = "none"
    """The large model's recompute as chosen (Recompute.describe)."""
    large: ShardMemory | None = None
    small: ShardMemory | None = None
    engine_weights: float = 0.0
    kv_cache: float = 0.0
    """KV cache per engine GPU for the rollouts that run at once."""
    kv_needed: float = 0.0
    """KV cache per engine GPU to run every rollout of the step at once."""
    train_peak: float = 0.0
    generate_peak: float = 0.0
    engine_peak: float = 0.0
    """Dedicated rollout GPU: weights + KV cache (0 when colocated)."""
    waves: int = 0
    times: dict[str, float] = field(default_factory=dict)
    schedule: str = "overlap"
    colocated: bool = False

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def step_time(self) -> float:
        """Seconds per step under the request's schedule (the phases in `times` add up when sequential)."""
        return schedule_step_time(self.times, self.schedule, colocated=self.colocated)

    @property
    def peak(self) -> float:
        return max(self.train_peak, self.generate_peak)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_request(req: PlanRequest) -> list[str]:
    """Problems that make every layout invalid (returned, not raised, so the report can show them)."""
    out = []
    if req.trainer_gpus < 1:
        out.append(f"rollout_gpus ({req.rollout_gpus}) leaves no trainer GPU of num_gpus ({req.num_gpus})")
    elif req.prompts_per_step % req.trainer_gpus:
        out.append(f"prompts_per_step ({req.prompts_per_step}) must be divisible by the trainer GPUs "
                   f"({req.trainer_gpus}) so that every data-parallel rank gets whole groups")
    if req.rollout_gpus % req.rollout_tp:
        out.append(f"rollout_gpus ({req.rollout_gpus}) must be a multiple of rollout_tp ({req.rollout_tp})")
    if req.rollout_gpus == 0 and req.rollout_tp != 1:
        out.append(f"rollout_tp ({req.rollout_tp}) must be 1 for a colocated engine (one per trainer GPU)")
    for name, value in (("recompute", req.recompute), ("small_recompute", req.small_recompute)):
        if value is None or value == "auto" and name == "recompute":
            continue
        try:
            as_recompute(value)
        except ValueError as e:
            out.append(f"{name}: {e} (or auto)" if name == "recompute" else f"{name}: {e}")
    return out


def layout_reasons(req: PlanRequest, tp: int, pp: int) -> list[str]:
    """Structural reasons (divisibility, node size, batch split) that `tp` x `pp` cannot run."""
    arch, world, reasons = req.large, req.trainer_gpus, []
    if world % (tp * pp):
        reasons.append(f"trainer GPUs ({world}) not divisible by TP x PP ({tp} x {pp} = {tp * pp})")
    for name in ("num_attention_heads", "num_key_value_heads", "ffn_hidden_size"):
        if getattr(arch, name) % tp:
            reasons.append(f"{name} ({getattr(arch, name)}) not divisible by TP ({tp})")
    if arch.num_layers % pp:
        reasons.append(f"num_layers ({arch.num_layers}) not divisible by PP ({pp})")
    elif req.recompute != "auto" and as_recompute(req.recompute).full:
        r, per_stage = as_recompute(req.recompute), arch.num_layers // pp
        k = r.num_layers or (1 if r.method != "block" else per_stage)
        if k > per_stage or (r.method != "block" and per_stage % k):
            reasons.append(f"recompute_num_layers ({k}) must divide the {per_stage} layers per stage of PP {pp}"
                           if k <= per_stage else
                           f"recompute_num_layers ({k}) exceeds the {per_stage} layers per stage of PP {pp}")
    if tp > req.gpus_per_node:
        reasons.append(f"TP ({tp}) spans nodes ({req.gpus_per_node} GPUs per node): its all-reduces "
                       "would cross the inter-node network")
    if not reasons:
        dp = world // (tp * pp)
        per_rank = req.sequences // dp
        if req.sequences % dp or per_rank % req.micro_batch_large:
            reasons.append(f"{req.sequences} rollouts do not split into {dp} large-model DP ranks of whole "
                           f"micro-batches of {req.micro_batch_large}")
    return reasons


def evaluate_layout(req: PlanRequest, tp: int, pp: int) -> LayoutPlan:
    """Memory and time of one layout (its `reasons` say why it is invalid, if it is)."""
    plan = LayoutPlan(tp=tp, pp=pp, dp=max(req.trainer_gpus // (tp * pp), 1), schedule=req.schedule,
                      colocated=req.rollout_gpus == 0)
    plan.reasons = layout_reasons(req, tp, pp)
    if plan.reasons:
        return plan
    world, cap = req.trainer_gpus, req.gpu.memory_bytes - req.reserve_gib * GIB
    seqs_per_dp = req.sequences // plan.dp
    m_large = seqs_per_dp // req.micro_batch_large
    m_small = max(req.sequences // world // req.micro_batch_small, 1)
    colocated = req.rollout_gpus == 0
    engine_w = engine_weight_bytes(req.small, req.rollout_tp)

    def memories(recompute: Recompute) -> tuple[ShardMemory, ShardMemory, float]:
        large = shard_memory(req.large, tp=tp, pp=pp, dp=plan.dp, micro_batch=req.micro_batch_large,
                             seq_len=req.seq_len, micro_batches=m_large, recompute=recompute,
                             distributed_optimizer=req.distributed_optimizer)
        small_choice = recompute if req.small_recompute is None else as_recompute(req.small_recompute)
        small = shard_memory(req.small, tp=1, pp=1, dp=world, micro_batch=req.micro_batch_small,
                             seq_len=req.seq_len, micro_batches=m_small, recompute=small_choice,
                             distributed_optimizer=req.distributed_optimizer)
        # The two updates run one after the other: one model's activations at a time.
        peak = large.static + small.static + max(large.activations, small.activations)
        return large, small, peak + (engine_w if colocated else 0.0)

    choices = ([Recompute("none"), Recompute("full")] if req.recompute == "auto"
               else [as_recompute(req.recompute)])
    for recompute in choices:
        plan.large, plan.small, plan.train_peak = memories(recompute)
        plan.recompute, plan.recompute_choice = recompute.full, recompute.describe()
        if plan.train_peak <= cap:
            break
    if plan.train_peak > cap:
        plan.reasons.append(
            f"training needs {plan.train_peak / GIB:.1f} GiB per GPU "
            f"({'with' if plan.recompute else 'without'} recompute), over the {cap / GIB:.1f} GiB usable "
            f"({req.gpu.memory_gib:.1f} - {req.reserve_gib:g} reserve)")
        return plan

    # Rollout engine: replicas, KV budget, concurrency.
    replicas = (world if colocated else req.rollout_gpus) // req.rollout_tp
    kv_tok = kv_bytes_per_token(req.small, req.rollout_tp)
    seqs = math.ceil(req.sequences / replicas)
    prompts = math.ceil(req.prompts_per_step / replicas)
    # A group's G samples share the prompt's KV (radix cache); each adds its own response.
    plan.kv_needed = (prompts * req.prompt_len + seqs * req.response_len) * kv_tok
    static = plan.large.static + plan.small.static
    if colocated:  # activations are freed while generating; training state and engine weights stay
        budget = cap - static - engine_w
    else:
        budget = req.gpu.memory_bytes * req.engine_mem_fraction - engine_w
    per_seq = (req.prompt_len / req.group_size + req.response_len) * kv_tok
    concurrency = min(int(budget // per_seq) if budget > 0 else 0, seqs)
    if concurrency < 1:
        where = "after training state and engine weights" if colocated else "on a rollout GPU"
        plan.reasons.append(f"no room for the KV cache of one rollout ({per_seq / GIB:.2f} GiB) {where}: "
                            f"{max(budget, 0) / GIB:.1f} GiB left")
        return plan
    plan.engine_weights = engine_w
    plan.kv_cache = min(plan.kv_needed, concurrency * per_seq)
    if colocated:
        plan.generate_peak = static + engine_w + plan.kv_cache
    else:
        plan.engine_peak = engine_w + plan.kv_cache

    peak, eff = req.gpu.peak_flops(req.precision), req.efficiency
    tokens = req.sequences * req.seq_len
    plan.times["generate"], plan.waves = decode_time(
        req.small, sequences=seqs, prompts=prompts, prompt_len=req.prompt_len,
        response_len=req.response_len, concurrency=concurrency, tp=req.rollout_tp, weight_bytes=engine_w,
        kv_bytes_token=kv_tok, hbm_bytes_s=req.gpu.hbm_bytes_per_s, peak_flops=peak, eff=eff)
    common = dict(tokens=tokens, seq_len=req.seq_len, gpus=world, peak_flops=peak, mfu=eff.mfu)
    nvlink = req.gpu.nvlink_gbs * 1e9 * eff.comm
    dp_link = nvlink if world <= req.gpus_per_node else req.network_gbs * 1e9 * eff.comm

    def tp_comm(passes: int) -> float:
        return tp_comm_time(req.large, tokens_per_dp=tokens // plan.dp, tp=tp, pp=pp, passes=passes,
                            link_bytes_s=nvlink)

    def dp_comm(params: int, dp: int) -> float:
        return dp_comm_time(params, dp=dp, distributed_optimizer=req.distributed_optimizer,
                            link_bytes_s=dp_link)

    plan.times["score"] = (train_time(req.large, backward=False, pp=pp, micro_batches=m_large, **common)
                           + train_time(req.small, backward=False, **common) + tp_comm(1))
    small_full = plan.recompute if req.small_recompute is None else as_recompute(req.small_recompute).full
    plan.times["update_small"] = (train_time(req.small, backward=True, recompute=small_full, **common)
                                  + dp_comm(plan.small.params, world))
    plan.times["update_large"] = (train_time(req.large, backward=True, recompute=plan.recompute, pp=pp,
                                             micro_batches=m_large, **common)
                                  + tp_comm(3 if plan.recompute else 2) + dp_comm(plan.large.params, plan.dp))
    link = req.gpu.hbm_bytes_per_s * eff.decode_bw if colocated else req.sync_gbs * 1e9
    plan.times["sync"] = 2 * req.small.num_parameters() / link
    return plan


def plan_layouts(req: PlanRequest, layouts: list[tuple[int, int]] | None = None) -> list[LayoutPlan]:
    """Every layout (or the given (tp, pp) pairs): valid ones ranked fastest first, then invalid ones.

    Empty when the request itself cannot run (see `check_request`)."""
    if check_request(req):
        return []
    if layouts is None:
        world = req.trainer_gpus
        layouts = [(tp, pp) for tp in _divisors(world) for pp in _divisors(world // tp)]
    plans = [evaluate_layout(req, tp, pp) for tp, pp in layouts]
    valid = sorted((p for p in plans if p.valid), key=lambda p: (p.step_time, p.peak))
    return valid + [p for p in plans if not p.valid]
