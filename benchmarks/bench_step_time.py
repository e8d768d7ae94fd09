"""Wall time per step of `codistill` vs `grpo` on the large model, by phase (the CPU analogue of the
paper's ~18% speed-up claim): same warm-started models, prompts, G and lengths, one run each.

    python benchmarks/bench_step_time.py [--steps 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tiny_runs import train, warm_started

PHASES = ("generate", "reward", "exchange", "score", "update_small", "update_large", "sync")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_step_time_"))
    base = warm_started(args.seed) + [f"run.steps={args.steps}", "run.eval_every=0",
                                                      "checkpoint.every=0"]
    arms = {"codistill": ["algorithm.mode=codistill"],
            "grpo_large": ["algorithm.mode=grpo", "algorithm.grpo_model=large"]}
    times = {}
    for arm, extra in arms.items():
        rows = train(work / arm, base + extra)[1:]  # step 1 warms caches
        times[arm] = {p: statistics.mean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES}
        times[arm]["step"] = statistics.mean(r["time/step"] for r in rows)
    lines = ["| phase | codistill (s) | grpo large (s) |", "|---|---|---|"]
    for p in (*PHASES, "step"):
        lines.append(f"| {p} | {times['codistill'][p]:.3f} | {times['grpo_large'][p]:.3f} |")
    ratio = times["codistill"]["step"] / times["grpo_large"]["step"]
    lines.append(f"\ncodistill / grpo_large step time = {ratio:.2f} (mean of steps 2..{args.steps}, "
                 "2 CPU cores, tiny example models; generation is a small share on CPU, unlike LLM runs)")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time.md").write_text(table + "\n")
    _plot(times, out / "step_time.png")


def _plot(times: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    arms = list(times)
    bottom = [0.0] * len(arms)
    for p in PHASES:
        vals = [times[a][p] for a in arms]
        ax.barh(arms, vals, left=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("seconds per step")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
