"""Aggregate a sweep: `<out>/summary.md` (printed too), `<out>/summary.json` and `<out>/plots/`.

Only finished cells count. Per cell group (the cells that differ only in the seed axis: `compare.pair_by`,
else an axis named `seed`): the mean and 95% t-interval over seeds of each metric at each `metrics.at`
point, of the wall time per cell and of the RL time per cell (sum of `time/step`). With `compare`: the
paired differences value - baseline of the compared axis, seed by seed, with their 95% interval.

Wall time of a cell: the sum of its local attempts (`attempts.jsonl`) plus, for SLURM, the span from the
first start in `slurm-logs/launches.log` to its last file (summary.md, else the final checkpoint marker),
which includes any wait between a requeue and the restart.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from megatron_codistill.sweep.cells import Cell, rows, status
from megatron_codistill.sweep.plots import curves, plot_curves
from megatron_codistill.sweep.spec import AT, SweepSpec
from megatron_codistill.sweep.stats import estimate

ACCURACY = re.compile(r"^eval/(?P<set>[^/]+)/(?P<model>[^/]+?)_(?P<kind>accuracy|sampled_accuracy)$")
WALL, RL = "wall time per cell (s)", "RL time per cell (s)"


@dataclass
class CellData:
    cell: Cell
    status: str
    values: dict[tuple[str, str | int], float] = field(default_factory=dict)
    """(metric key, at) -> value, for finished cells with that metric."""
    rows: list[dict] = field(default_factory=list)
    wall_s: float | None = None
    rl_s: float | None = None


def value_at(rows_: list[dict], key: str, at: str | int) -> float | None:
    """The value of `key` at `at` ("first", "last", "change", "mean_last_N", a step) in a cell's rows."""
    pts = [(r["step"], r[key]) for r in rows_ if key in r and r[key] is not None]
    if not pts:
        return None
    if isinstance(at, int):
        return next((v for s, v in pts if s == at), None)
    if at == "first":
        return pts[0][1]
    if at == "last":
        return pts[-1][1]
    if at == "change":
        return pts[-1][1] - pts[0][1]
    n = int(AT.match(at)["n"])
    last = [v for _, v in pts[-n:]]
    return sum(last) / len(last) if len(last) == n else None


def at_label(at: str | int) -> str:
    if isinstance(at, int):
        return f"step {at}"
    if at == "change":
        return "last - first"
    if at.startswith("mean_last_"):
        return f"mean of last {at.removeprefix('mean_last_')}"
    return at


def _time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def wall_seconds(cell: Cell) -> float | None:
    """The cell's wall time (see the module docstring); None when nothing recorded it."""
    total, known = 0.0, False
    attempts = cell.dir / "attempts.jsonl"
    if attempts.exists():
        total += sum(json.loads(ln)["wall_s"] for ln in attempts.read_text().splitlines() if ln.strip())
        known = True
    launches = cell.dir / "slurm-logs" / "launches.log"
    if launches.exists():
        starts = re.findall(r"^start=(\S+)", launches.read_text(), flags=re.M)
        last = cell.dir / "summary.md"
        last = last if last.exists() else cell.dir / "checkpoints" / f"step_{cell.steps:06d}" / "COMPLETE"
        if starts and last.exists():
            total += max(last.stat().st_mtime - _time(starts[0]), 0.0)
            known = True
    return total if known else None


def collect(spec: SweepSpec, cells: list[Cell]) -> list[CellData]:
    """Status of every cell; values, wall and RL time of the finished ones."""
    out = []
    for cell in cells:
        d = CellData(cell, status(cell))
        if d.status == "finished":
            d.rows = rows(cell.dir)
            d.wall_s = wall_seconds(cell)
            d.rl_s = sum(r.get("time/step", 0.0) for r in d.rows if r["step"] > 0)
        out.append(d)
    keys = metric_keys(spec, out)
    for d in out:
        for key in keys:
            for at in spec.at:
                v = value_at(d.rows, key, at)
                if v is not None:
                    d.values[(key, at)] = v
    return out


def metric_keys(spec: SweepSpec, data: list[CellData]) -> list[str]:
    """The spec's metric keys (each must exist in some finished cell), else the held-out accuracies."""
    present = {k for d in data for r in d.rows for k in r}
    if spec.metrics is not None:
        missing = [k for k in spec.metrics if k not in present and any(d.rows for d in data)]
        if missing:
            raise ValueError(f"{spec.path}: metrics.keys: {missing} in no finished cell's metrics.jsonl; "
                             f"available: {sorted(present - {'step'})}")
        return list(spec.metrics)
    found = [(m["set"], m["model"] != "small", m["model"], m["kind"] != "accuracy", k)
             for k in present if (m := ACCURACY.match(k))]
    return [f[-1] for f in sorted(found)]


def _group_table(spec: SweepSpec, data: list[CellData], keys: list[str]) -> list[dict]:
    seed = spec.seed_axis
    drop = (seed,) if seed else ()
    groups: dict[tuple, list[CellData]] = {}
    for d in data:
        groups.setdefault(d.cell.group(drop), []).append(d)
    sid = (lambda d: d.cell.values[seed]) if seed else (lambda d: d.cell.name)
    out = []
    for members in groups.values():
        done = [d for d in members if d.status == "finished"]
        stats = [(WALL, "per cell", [(sid(d), d.wall_s) for d in done if d.wall_s is not None]),
                 (RL, "sum of time/step", [(sid(d), d.rl_s) for d in done if d.rl_s is not None])]
        stats += [(key, at_label(at), [(sid(d), d.values[(key, at)]) for d in done if (key, at) in d.values])
                  for key in keys for at in spec.at]
        out.append({"values": {a: v for a, v in members[0].cell.values.items() if a not in drop},
                    "finished": len(done), "cells": len(members),
                    "metrics": [_entry(m, at, vals) for m, at, vals in stats]})
    return out


def _entry(metric: str, at: str, vals: list[tuple[str, float]]) -> dict:
    """{metric, at, by_seed, n, mean, sd, lo, hi, half} of (seed, value) pairs."""
    return {"metric": metric, "at": at, "by_seed": dict(vals), **estimate([v for _, v in vals]).to_dict()}


def _paired_table(spec: SweepSpec, data: list[CellData], keys: list[str]) -> list[dict]:
    c = spec.compare
    if c is None:
        return []
    by_cell = {frozenset(d.cell.values.items()): d for d in data if d.status == "finished"}
    contexts = []
    for d in data:
        ctx = {a: v for a, v in d.cell.values.items() if a not in (c.axis, c.pair_by)}
        if ctx not in contexts:
            contexts.append(ctx)
    out = []
    for ctx in contexts:
        for value in spec.axis(c.axis).values:
            if value == c.baseline:
                continue
            for key in keys:
                for at in spec.at:
                    diffs = []
                    for s in spec.axis(c.pair_by).values:
                        pair = [by_cell.get(frozenset({**ctx, c.axis: v, c.pair_by: s}.items()))
                                for v in (value, c.baseline)]
                        if all(x is not None and (key, at) in x.values for x in pair):
                            diffs.append((s, pair[0].values[(key, at)] - pair[1].values[(key, at)]))
                    out.append({"values": ctx, c.axis: value, "baseline": c.baseline,
                                **_entry(key, at_label(at), diffs)})
    return out


def _decimals(*xs: float | None) -> int:
    """Decimals of a row of numbers, from its largest magnitude: 0 from 1000, 1 from 10, 3 from 0.01 (and
    for zeros), else 3 significant digits (at most 8 decimals)."""
    ref = max((abs(x) for x in xs if x is not None), default=0.0)
    if ref >= 1000:
        return 0
    if ref >= 10:
        return 1
    return 3 if ref >= 0.01 or ref == 0 else min(2 - math.floor(math.log10(ref)), 8)


def _num(x: float | None, d: int, signed: bool = False) -> str:
    return "-" if x is None else f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def _row(e: dict, signed: bool = False) -> list[str]:
    """[mean, 95% CI, by seed] of an estimate entry, all with the mean's decimals."""
    d = _decimals(e["mean"], e["lo"], e["hi"])
    ci = "-" if e["lo"] is None else f"[{_num(e['lo'], d, signed)}, {_num(e['hi'], d, signed)}]"
    seeds = ", ".join(f"{s}: {_num(v, d, signed)}" for s, v in e["by_seed"].items()) or "-"
    return [_num(e["mean"], d, signed), ci, seeds]


def markdown(spec: SweepSpec, summary: dict) -> str:
    """The summary as markdown: the group table, then the paired differences."""
    seed = spec.seed_axis
    axes = [a.name for a in spec.axes if a.name != seed]
    n_done = sum(c["status"] == "finished" for c in summary["cells"])
    lines = [f"# Sweep {spec.name}: {n_done} of {len(summary['cells'])} cells finished", "",
             f"Base config `{spec.base}`; cells under `{spec.out / 'cells'}`. Mean and 95% t-interval over "
             + (f"the `{seed}` axis" if seed else "cells (no seed axis)") + " of each group.", ""]
    head = [*axes, "finished", "metric", "at", "n", "mean", "95% CI", f"by {seed or 'cell'}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in summary["groups"]:
        for m in g["metrics"]:
            row = [*(g["values"][a] for a in axes), f"{g['finished']}/{g['cells']}", m["metric"], m["at"],
                   str(m["n"]), *_row(m)]
            lines.append("| " + " | ".join(row) + " |")
    if spec.compare is not None:
        c = spec.compare
        ctx = [a for a in axes if a != c.axis]
        lines += ["", f"## Paired differences: {c.axis} - {c.baseline}, by {c.pair_by}", "",
                  f"Per {c.pair_by}, the value minus the baseline's; mean and 95% t-interval over the {c.pair_by}s "
                  "both cells finished. The half-width is the smallest mean difference these seeds could tell "
                  "from 0 at the 5% level.", ""]
        head = [*ctx, c.axis, "metric", "at", "n", "mean difference", "95% CI", "half-width", f"by {c.pair_by}"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in summary["paired"]:
            mean, ci, seeds = _row(p, signed=True)
            row = [*(p["values"][a] for a in ctx), p[c.axis], p["metric"], p["at"], str(p["n"]), mean, ci,
                   _num(p["half"], _decimals(p["mean"], p["lo"], p["hi"])), seeds]
            lines.append("| " + " | ".join(row) + " |")
    if summary.get("plots"):
        lines += ["", f"Plots (mean over {seed or 'cells'} with a 95% band): {spec.out / 'plots'}"]
    return "\n".join(lines) + "\n"


def aggregate(spec: SweepSpec, cells: list[Cell], *, plots: bool = True) -> tuple[str, dict]:
    """Write summary.md, summary.json and the plots under spec.out; return (markdown, summary)."""
    data = collect(spec, cells)
    keys = metric_keys(spec, data)
    summary = {
        "name": spec.name, "spec": str(spec.path), "base": str(spec.base), "out": str(spec.out),
        "axes": {a.name: {v: ovs for v, ovs in a.values.items()} for a in spec.axes},
        "seed_axis": spec.seed_axis, "compare": None if spec.compare is None else vars(spec.compare),
        "metrics": keys, "at": spec.at,
        "cells": [{"name": d.cell.name, "values": d.cell.values, "dir": str(d.cell.dir), "status": d.status,
                   "wall_s": d.wall_s, "rl_s": d.rl_s,
                   "values_at": {f"{k}@{a}": v for (k, a), v in d.values.items()}} for d in data],
        "groups": _group_table(spec, data, keys),
        "paired": _paired_table(spec, data, keys),
        "curves": {k: curves(spec, data, k) for k in keys},
    }
    spec.out.mkdir(parents=True, exist_ok=True)
    summary["plots"] = [str(p) for p in plot_curves(spec, summary["curves"])] if plots else []
    text = markdown(spec, summary)
    (spec.out / "summary.md").write_text(text)
    (spec.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return text, summary

