"""Helpers of the sweep tests: write a spec, make a cell directory look like a (partly) finished run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from scipy import stats as sps

from tests.trainer.conftest import FAST, TINY

REPO = Path(__file__).resolve().parents[2]
GRID_KEYS = ["eval/arith/small_accuracy", "eval/arith/small_sampled_accuracy", "small/reward/mean", "time/step"]
AT = {"first": lambda v: v[0], "last": lambda v: v[-1], "last - first": lambda v: v[-1] - v[0]}


def write_spec(tmp: Path, **fields) -> Path:
    """A spec YAML in `tmp` (base: the tiny example, out: tmp/out unless given) with `fields`."""
    raw = {"base": str(TINY), "out": str(tmp / "out"), **fields}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tiny_grid(tmp: Path, **fields) -> Path:
    """The 2 x 2 grid of the tests: modes codistill / grpo_small x seeds 1, 2 of 2-step tiny runs."""
    return write_spec(tmp, name="grid", overrides=[*FAST, "checkpoint.every=1", "run.eval_sampled=true"],
                      axes={"mode": {"codistill": ["algorithm.mode=codistill"],
                                     "grpo_small": ["algorithm.mode=grpo", "algorithm.grpo_model=small"]},
                            "seed": [1, 2]},
                      metrics={"keys": GRID_KEYS, "at": ["first", "last", "change"]},
                      compare={"axis": "mode", "baseline": "grpo_small", "pair_by": "seed"}, **fields)


def fake_run(run_dir: Path, rows: list[dict], *, steps: int, final: bool = True, wall_s: list[float] = ()) -> None:
    """Write what a run leaves: metrics.jsonl of `rows`, the final checkpoint marker (if `final`), summary.md,
    and local attempts of `wall_s` seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final:
        marker = run_dir / "checkpoints" / f"step_{steps:06d}" / "COMPLETE"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
        (run_dir / "summary.md").write_text("# done\n")
    if wall_s:
        (run_dir / "attempts.jsonl").write_text("".join(json.dumps({"wall_s": w, "returncode": 0}) + "\n"
                                                        for w in wall_s))


def hand_ci(xs: list[float]) -> tuple[float, float, float]:
    """Mean, lower and upper end of the 95% t-interval of `xs`, computed here by hand."""
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def md_table(text: str, first_col: str) -> list[dict]:
    """The rows ({header: cell}) of the first markdown table in `text` whose header starts with `first_col`."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_col} |"))
    head = [h.strip() for h in lines[start].strip("|").split("|")]
    out = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        out.append(dict(zip(head, [c.strip() for c in ln.strip("|").split("|")])))
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _fmt(x: float, d: int, signed: bool = False) -> str:
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def decimals(*xs: float) -> int:
    """The table's decimals for a row whose numbers include `xs`: 0 from 1000, 1 from 10, 3 from 0.01 and
    for zeros, else 3 significant digits."""
    ref = max(abs(x) for x in xs)
    if ref >= 1000:
        return 0
    if ref >= 10:
        return 1
    return 3 if ref >= 0.01 or ref == 0 else min(2 - math.floor(math.log10(ref)), 8)


def check_grid_summary(out: Path, text: str) -> None:
    """The tiny grid's summary.md against means, intervals and paired differences computed here from the
    cells' metrics.jsonl (rounded by the table's rule, `decimals`)."""
    curves = {}
    for mode in ("codistill", "grpo_small"):
        for seed in (1, 2):
            rows = jsonl(out / "cells" / f"mode={mode},seed={seed}" / "metrics.jsonl")
            for key in GRID_KEYS:
                curves[(mode, seed, key)] = [r[key] for r in rows if key in r]
    table = {(r["mode"], r["metric"], r["at"]): r for r in md_table(text, "mode")}
    paired = {(r["metric"], r["at"]): r for r in md_table(text[text.index("## Paired"):], "mode")}
    checked = 0
    for key in GRID_KEYS:
        for at, f in AT.items():
            for mode in ("codistill", "grpo_small"):
                xs = [f(curves[(mode, s, key)]) for s in (1, 2)]
                m, lo, hi = hand_ci(xs)
                d = decimals(m, lo, hi)
                r = table[(mode, key, at)]
                assert (r["finished"], r["n"], r["mean"]) == ("2/2", "2", _fmt(m, d)), (mode, key, at, r)
                assert r["95% CI"] == f"[{_fmt(lo, d)}, {_fmt(hi, d)}]", (mode, key, at, r)
                assert r["by seed"] == f"1: {_fmt(xs[0], d)}, 2: {_fmt(xs[1], d)}"
                checked += 1
            diffs = [f(curves[("codistill", s, key)]) - f(curves[("grpo_small", s, key)]) for s in (1, 2)]
            m, lo, hi = hand_ci(diffs)
            d = decimals(m, lo, hi)
            r = paired[(key, at)]
            assert (r["mode"], r["n"], r["mean difference"]) == ("codistill", "2", _fmt(m, d, True)), (key, at, r)
            assert r["95% CI"] == f"[{_fmt(lo, d, True)}, {_fmt(hi, d, True)}]" and r["half-width"] == _fmt(
                (hi - lo) / 2, d), (key, at, r)
            assert r["by seed"] == f"1: {_fmt(diffs[0], d, True)}, 2: {_fmt(diffs[1], d, True)}"
    assert checked == len(GRID_KEYS) * len(AT) * 2
    # the runs differ: the KD term is in codistill's small reward only, so not every difference is 0
    assert any(paired[(k, a)]["mean difference"] not in ("+0.000", "-0.000") for k in GRID_KEYS for a in AT)
