"""Render a plan as a markdown report or a JSON-ready dict (memory in GiB, times in seconds)."""

from __future__ import annotations

from megatron_codistill.planner.hardware import GIB
from megatron_codistill.planner.plan import LayoutPlan, PlanRequest, check_request

PHASES = ("generate", "score", "update_small", "update_large", "sync")


def _gib(x: float) -> float:
    return round(x / GIB, 2)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def layout_dict(p: LayoutPlan) -> dict:
    """One layout as plain data."""
    out: dict = {"tp": p.tp, "pp": p.pp, "dp": p.dp, "valid": p.valid, "reasons": p.reasons}
    if p.large is not None:
        out["recompute"] = p.recompute
        out["recompute_choice"] = p.recompute_choice
        for role, m in (("large", p.large), ("small", p.small)):
            out[f"memory_{role}_gib"] = {
                "stage": m.stage, "params": m.params, "weights": _gib(m.weights),
                "gradients": _gib(m.gradients), "optimizer": _gib(m.optimizer),
                "activations": _gib(m.activations),
                "activations_no_recompute": _gib(m.activations_no_recompute),
                "activations_full_recompute": _gib(m.activations_full_recompute), "total": _gib(m.total)}
    if p.times:
        out["memory_engine_gib"] = {"weights": _gib(p.engine_weights), "kv_cache": _gib(p.kv_cache),
                                    "kv_cache_all_at_once": _gib(p.kv_needed), "waves": p.waves}
        out["peak_gib"] = {"train": _gib(p.train_peak), "generate": _gib(p.generate_peak),
                           "rollout_gpu": _gib(p.engine_peak)}
        out["time_s"] = {k: round(v, 3) for k, v in p.times.items()} | {"step": round(p.step_time, 3)}
    return out


def to_json(req: PlanRequest, plans: list[LayoutPlan]) -> dict:
    """The request and every layout, ranked."""
    request = {
        "small": req.small_name, "large": req.large_name, "gpu": req.gpu.name, "num_gpus": req.num_gpus,
        "trainer_gpus": req.trainer_gpus, "rollout_gpus": req.rollout_gpus, "rollout_tp": req.rollout_tp,
        "gpus_per_node": req.gpus_per_node, "prompt_len": req.prompt_len, "response_len": req.response_len,
        "prompts_per_step": req.prompts_per_step, "group_size": req.group_size,
        "micro_batch_large": req.micro_batch_large, "micro_batch_small": req.micro_batch_small,
        "precision": req.precision, "distributed_optimizer": req.distributed_optimizer,
        "recompute": _choice(req.recompute), "small_recompute": _choice(req.small_recompute),
        "reserve_gib": req.reserve_gib,
        "small_params": req.small.num_parameters(), "large_params": req.large.num_parameters(),
        "efficiency": vars(req.efficiency),
    }
    return {"request": request, "problems": check_request(req), "layouts": [layout_dict(p) for p in plans]}


def _choice(value) -> str | None:
    return value if value is None or isinstance(value, str) else value.describe()


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def to_markdown(req: PlanRequest, plans: list[LayoutPlan], top: int = 10) -> str:
    """A report: the ranked valid layouts, the best one's memory by role, and the invalid layouts."""
    if req.rollout_gpus == 0:
        engine = f"colocated engine ({req.trainer_gpus} replicas, TP 1)"
    else:
        servers = req.rollout_gpus // req.rollout_tp
        engine = f"{req.rollout_gpus} rollout GPUs ({servers} servers, TP {req.rollout_tp})"
    e = req.efficiency
    lines = [
        f"# Plan: {req.small_name} ({_count(req.small.num_parameters())}, small) + {req.large_name} "
        f"({_count(req.large.num_parameters())}, large) on {req.num_gpus} x {req.gpu.name}",
        "",
        f"{req.trainer_gpus} trainer GPUs, {engine}; {req.prompts_per_step} prompts x G {req.group_size} = "
        f"{req.sequences} rollouts of {req.prompt_len} + {req.response_len} tokens; {req.precision} peak "
        f"{req.gpu.peak_flops(req.precision) / 1e12:.0f} TFLOP/s, HBM {req.gpu.hbm_tbs} TB/s; MFU {e.mfu}, "
        f"decode bandwidth {e.decode_bw}; micro-batch {req.micro_batch_large} (large) / "
        f"{req.micro_batch_small} (small); distributed optimizer "
        f"{'on' if req.distributed_optimizer else 'off'}; schedule {req.schedule}"
        f"{' (colocated engine: nothing overlaps)' if req.rollout_gpus == 0 and req.schedule != 'sequential' else ''}.",
        "",
    ]
    problems = check_request(req)
    if problems:
        return "\n".join(lines + ["No layout can run:", *[f"- {x}" for x in problems]]) + "\n"
    valid = [p for p in plans if p.valid]
    invalid = [p for p in plans if not p.valid]
    if valid:
        lines += [_row(["rank", "TP", "PP", "DP", "recompute", "GiB/GPU train", "GiB/GPU generate",
                        *[f"{k} s" for k in PHASES], f"step s ({req.schedule})"]),
                  _row(["---"] * (8 + len(PHASES)))]
        for i, p in enumerate(valid[:top], 1):
            gen = _gib(p.generate_peak) if req.rollout_gpus == 0 else f"{_gib(p.engine_peak)} (rollout GPU)"
            lines.append(_row([i, p.tp, p.pp, p.dp, p.recompute_choice, _gib(p.train_peak),
                               gen, *[f"{p.times[k]:.2f}" for k in PHASES], f"{p.step_time:.2f}"]))
        if len(valid) > top:
            lines.append(f"\n({len(valid) - top} more valid layouts not shown; --json lists all)")
        best = valid[0]
        title = f"## Memory per GPU of the best layout (TP {best.tp}, PP {best.pp}, DP {best.dp}), GiB"
        lines += ["", title, "",
                  _row(["role", "params", "weights", "gradients", "optimizer", "activations",
                        "(no recompute / full)", "KV cache", "total"]), _row(["---"] * 9)]
        for role, m in ((f"large, stage {best.large.stage}", best.large), ("small (replica)", best.small)):
            lines.append(_row([role, _count(m.params), _gib(m.weights), _gib(m.gradients),
                               _gib(m.optimizer), _gib(m.activations),
                               f"{_gib(m.activations_no_recompute)} / {_gib(m.activations_full_recompute)}",
                               "", _gib(m.total)]))
        lines.append(_row(["rollout engine", "", _gib(best.engine_weights), "", "", "", "",
                           _gib(best.kv_cache), _gib(best.engine_weights + best.kv_cache)]))
        lines.append(f"\nKV cache for all {req.sequences} rollouts at once: {_gib(best.kv_needed)} GiB per "
                     f"engine GPU; generation runs in {best.waves} wave(s). Reserve {req.reserve_gib:g} GiB "
                     "per GPU not shown.")
    else:
        lines.append("No valid layout.")
    if invalid:
        lines += ["", "## Invalid layouts", "", _row(["TP", "PP", "why"]), _row(["---"] * 3)]
        lines += [_row([p.tp, p.pp, "; ".join(p.reasons)]) for p in invalid]
    return "\n".join(lines) + "\n"
