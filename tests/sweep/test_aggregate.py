"""Aggregation against numbers computed here by hand from the cells' metrics (written by the test).

Two modes x four seeds; mode b's seed 4 is unfinished, so it counts in no statistic and its pair drops out.
"""

from __future__ import annotations

import json
import math

import pytest

from megatron_codistill.sweep.aggregate import aggregate, value_at
from megatron_codistill.sweep.cells import expand
from megatron_codistill.sweep.spec import load_spec
from megatron_codistill.sweep.stats import estimate, t_quantile
from tests.sweep.conftest import decimals, fake_run, hand_ci, md_table, write_spec

KEY = "eval/x/small_accuracy"
# eval at steps 0, 2, 4 per (mode, seed); the sum of time/step over steps 1..4 is 4 * seed * 0.5
EVALS = {("a", 1): [0.1, 0.2, 0.4], ("a", 2): [0.2, 0.3, 0.5], ("a", 3): [0.0, 0.3, 0.6], ("a", 4): [0.3, 0.3, 0.3],
         ("b", 1): [0.1, 0.1, 0.2], ("b", 2): [0.2, 0.2, 0.2], ("b", 3): [0.0, 0.1, 0.3], ("b", 4): [0.5, 0.5, 0.9]}
WALL = {("a", 1): [10.0], ("a", 2): [11.0, 1.0], ("a", 3): [14.0], ("a", 4): [9.0],
        ("b", 1): [20.0], ("b", 2): [22.0], ("b", 3): [30.0], ("b", 4): [5.0]}


def _rows(mode, seed):
    rows = []
    for step in range(5):
        row = {"step": step}
        if step % 2 == 0:
            row[KEY] = EVALS[(mode, seed)][step // 2]
        if step:
            row["time/step"] = 0.5 * seed
        rows.append(row)
    return rows


@pytest.fixture
def sweep(tmp_path):
    spec = load_spec(write_spec(
        tmp_path, name="hand", overrides=["run.steps=4"],
        axes={"mode": {"a": ["algorithm.mode=codistill"], "b": ["algorithm.mode=grpo"]}, "seed": [1, 2, 3, 4]},
        metrics={"keys": [KEY], "at": ["first", "last", "change", "mean_last_2", 2]},
        compare={"axis": "mode", "baseline": "b"}))
    cells = expand(spec)
    for c in cells:
        key = (c.values["mode"], int(c.values["seed"]))
        fake_run(c.dir, _rows(*key), steps=4, final=key != ("b", 4), wall_s=WALL[key])
    return spec, cells


def test_t_quantile_matches_the_printedmd_table():
    # Student's t, two-sided 95%: 12.706 (1 df), 4.303 (2), 3.182 (3), 2.262 (9), 1.960 (infinite)
    for df, t in ((1, 12.706), (2, 4.303), (3, 3.182), (9, 2.262), (10**7, 1.960)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
    e = estimate([1.0, 2.0, 4.0])
    assert (e.n, e.mean, e.sd) == (3, pytest.approx(7 / 3), pytest.approx(math.sqrt(7 / 3)))
    assert e.half == pytest.approx(4.302653 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-6)
    assert estimate([5.0]).half is None and estimate([]).mean is None


def test_value_at_each_point():
    rows = _rows("a", 1)
    assert [value_at(rows, KEY, at) for at in ("first", "last", "change", "mean_last_2", 2, 3)] == [
        0.1, 0.4, pytest.approx(0.3), pytest.approx(0.3), 0.2, None]
    assert value_at(rows, KEY, "mean_last_4") is None  # fewer than 4 evaluations
    assert value_at(rows, "missing", "last") is None


def test_table_and_json_match_the_cells_by_hand(sweep):
    spec, cells = sweep
    text, summary = aggregate(spec, cells)
    assert text == (spec.out / "summary.md").read_text()
    assert json.loads((spec.out / "summary.json").read_text())["groups"] == summary["groups"]
    assert text.startswith("# Sweep hand: 7 of 8 cells finished")
    rows = {(r["mode"], r["metric"], r["at"]): r for r in md_table(text, "mode")}
    finished = {m: [s for s in (1, 2, 3, 4) if (m, s) != ("b", 4)] for m in "ab"}
    points = {"first": lambda v: v[0], "last": lambda v: v[2], "last - first": lambda v: v[2] - v[0],
              "mean of last 2": lambda v: (v[1] + v[2]) / 2, "step 2": lambda v: v[1]}
    for mode, seeds in finished.items():
        for at, f in points.items():
            xs = [f(EVALS[(mode, s)]) for s in seeds]
            m, lo, hi = hand_ci(xs)
            r = rows[(mode, KEY, at)]
            assert r["finished"] == f"{len(seeds)}/4" and r["n"] == str(len(seeds))
            d = decimals(m, lo, hi)
            assert r["mean"] == f"{m:.{d}f}" and r["95% CI"] == f"[{lo:.{d}f}, {hi:.{d}f}]", (mode, at, r)
            assert r["by seed"] == ", ".join(f"{s}: {x:.{d}f}" for s, x in zip(seeds, xs))
        for metric, at, xs in (("wall time per cell (s)", "per cell", [sum(WALL[(mode, s)]) for s in seeds]),
                               ("RL time per cell (s)", "sum of time/step", [4 * 0.5 * s for s in seeds])):
            m, lo, hi = hand_ci(xs)
            d = decimals(m, lo, hi)
            r = rows[(mode, metric, at)]
            assert (r["n"], r["mean"], r["95% CI"]) == (str(len(seeds)), f"{m:.{d}f}", f"[{lo:.{d}f}, {hi:.{d}f}]")

    paired = {(r["mode"], r["at"]): r for r in md_table(text[text.index("## Paired"):], "mode")}
    for at, f in points.items():
        d = [f(EVALS[("a", s)]) - f(EVALS[("b", s)]) for s in (1, 2, 3)]  # seed 4 has no finished pair
        m, lo, hi = hand_ci(d)
        r = paired[("a", at)]
        k = decimals(m, lo, hi)
        assert r["n"] == "3" and r["mean difference"] == f"{m:+.{k}f}", (at, r)
        assert r["95% CI"] == f"[{lo:+.{k}f}, {hi:+.{k}f}]" and r["half-width"] == f"{(hi - lo) / 2:.{k}f}"
        assert r["by seed"] == ", ".join(f"{s}: {x:+.{k}f}" for s, x in zip((1, 2, 3), d))
    # the JSON has the unrounded numbers
    (last,) = [p for p in summary["paired"] if p["at"] == "last"]
    m, lo, hi = hand_ci([0.4 - 0.2, 0.5 - 0.2, 0.6 - 0.3])
    assert (last["mean"], last["lo"], last["hi"]) == (pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    assert {c["name"]: c["status"] for c in summary["cells"]}["mode=b,seed=4"] == "partial"


def test_curves_are_means_over_seeds_per_step_and_plots_are_written(sweep):
    spec, cells = sweep
    _, summary = aggregate(spec, cells)
    (panel,) = summary["curves"][KEY]
    lines = {ln["label"]: ln["points"] for ln in panel["lines"]}
    assert set(lines) == {"mode=a", "mode=b"}
    for mode, seeds in (("a", (1, 2, 3, 4)), ("b", (1, 2, 3))):
        for i, p in enumerate(lines[f"mode={mode}"]):
            m, lo, hi = hand_ci([EVALS[(mode, s)][i] for s in seeds])
            assert (p["step"], p["n"]) == (2 * i, len(seeds))
            assert (p["mean"], p["lo"], p["hi"]) == (pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    (png,) = summary["plots"]
    assert png.endswith("plots/eval_x_small_accuracy.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_default_metrics_are_the_held_out_accuracies(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides=["run.steps=1"], axes={"seed": [1, 2]}))
    cells = expand(spec)
    for i, c in enumerate(cells):
        fake_run(c.dir, [{"step": 0, "eval/g/large_accuracy": 0.5, "eval/g/small_sampled_accuracy": 0.1,
                          "eval/g/small_accuracy": 0.2 * i, "eval/a/small_accuracy": 0.3, "small/loss": 1.0},
                         {"step": 1, "eval/g/small_accuracy": 0.4 + 0.2 * i}], steps=1)
    _, summary = aggregate(spec, cells, plots=False)
    assert summary["metrics"] == ["eval/a/small_accuracy", "eval/g/small_accuracy", "eval/g/small_sampled_accuracy",
                                  "eval/g/large_accuracy"]
    (group,) = summary["groups"]  # no compare: the seed axis named `seed` is still averaged over
    last = next(m for m in group["metrics"] if m["metric"] == "eval/g/small_accuracy" and m["at"] == "last")
    assert last["by_seed"] == {"1": 0.4, "2": pytest.approx(0.6)} and last["mean"] == pytest.approx(0.5)
    spec.metrics = ["eval/g/small_acuracy"]
    with pytest.raises(ValueError, match=r"metrics.keys: \['eval/g/small_acuracy'\] in no finished cell"):
        aggregate(spec, cells, plots=False)


def test_decimals_follow_the_size_of_the_row():
    from megatron_codistill.sweep.aggregate import _decimals

    assert [_decimals(x) for x in (0.0, 0.5, 9.99, 10.0, 999.0, 1000.0, 0.005, 0.00012, 1e-12)] == [
        3, 3, 3, 1, 1, 0, 5, 6, 8]
    assert _decimals(0.0001, -0.3, 0.3) == 3 and _decimals(None, 12.0) == 1
