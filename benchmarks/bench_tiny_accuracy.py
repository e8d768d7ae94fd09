"""Small-model accuracy after the same number of RL steps for `codistill`, `grpo` (small) and `kd_grpo`
on the tiny task: several seeds per arm, greedy and sampled accuracy, mean with a 95% interval, one plot,
and a plain statement of whether the differences exceed the noise.

All runs start from one supervised warm start (seed --warm-seed, cached); the seeds vary the RL phase
(sampling, prompt order), so the intervals measure RL noise, not warm-start noise.

    python benchmarks/bench_tiny_accuracy.py [--seeds 5] [--steps 60] [--eval-every 10]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from scipy import stats
from tiny_runs import train, warm_started

ARMS = {
    "grpo_small": ["algorithm.mode=grpo", "algorithm.grpo_model=small"],
    "kd_grpo": ["algorithm.mode=kd_grpo"],
    "codistill": ["algorithm.mode=codistill"],
}
KEYS = {"greedy": "eval/arith/small_accuracy", "sampled": "eval/arith/small_sampled_accuracy"}


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, stats.t.ppf(0.975, len(xs) - 1) * sd / math.sqrt(len(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--last", type=int, default=3, help="average the last N evaluations of each run")
    ap.add_argument("--eval-limit", type=int, default=500)
    ap.add_argument("--warm-seed", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_tiny_accuracy_"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, dict[int, list[dict]]] = {a: {} for a in ARMS}
    common = [f"run.steps={args.steps}", f"run.eval_every={args.eval_every}", "run.eval_sampled=true",
              "run.eval_models=[small]", "checkpoint.every=0",
              f"data.eval=[{{name: arith, path: ./data/test.jsonl, preset: arith, limit: {args.eval_limit}}}]"]
    warm = warm_started(args.warm_seed)
    for seed in range(args.seeds):
        base = [*warm, *common, f"run.seed={100 + seed}", f"data.shuffle_seed={seed}"]
        for arm, extra in ARMS.items():
            rows = [r for r in train(work / f"{arm}{seed}", base + extra) if KEYS["greedy"] in r]
            curves[arm][seed] = rows
            print(f"seed {seed} {arm}: greedy {rows[-1][KEYS['greedy']]:.3f} "
                  f"sampled {rows[-1][KEYS['sampled']]:.3f}", flush=True)
    (out / "tiny_accuracy_runs.json").write_text(json.dumps(curves))
    final = {a: {k: [sum(r[key] for r in rows[-args.last:]) / len(rows[-args.last:]) for rows in runs.values()]
                 for k, key in KEYS.items()} for a, runs in curves.items()}
    lines = [f"Small-model accuracy on {args.eval_limit} held-out problems, mean of the last {args.last} evaluations "
             f"(steps up to {args.steps}), {args.seeds} seeds, 95% t-interval:", "",
             "| arm | greedy | sampled (T=1) |", "|---|---|---|"]
    for arm in ARMS:
        cells = ["{:.3f} ± {:.3f}".format(*mean_ci(final[arm][k])) for k in KEYS]
        lines.append(f"| {arm} | {cells[0]} | {cells[1]} |")
    lines.append("")
    for arm in ("kd_grpo", "codistill"):
        for k in KEYS:
            diff = [x - y for x, y in zip(final[arm][k], final["grpo_small"][k])]  # paired by seed
            m, h = mean_ci(diff)
            verdict = "larger than the noise" if abs(m) > h else "within the noise"
            lines.append(f"- {arm} - grpo_small, {k}: {m:+.3f} ± {h:.3f} (paired by seed): {verdict}.")
    table = "\n".join(lines)
    print(table)
    (out / "tiny_accuracy.md").write_text(table + "\n")
    _plot(curves, out / "tiny_accuracy.png")


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    for ax, (kind, key) in zip(axes, KEYS.items()):
        for arm, runs in curves.items():
            steps = [r["step"] for r in next(iter(runs.values()))]
            per_step = list(zip(*[[r[key] for r in rows] for rows in runs.values()]))
            m = [mean_ci(list(v))[0] for v in per_step]
            h = [mean_ci(list(v))[1] for v in per_step]
            ax.plot(steps, m, label=arm)
            ax.fill_between(steps, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], alpha=0.2)
        ax.set_title(f"small model, {kind} accuracy")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
