"""Reward throughput: answers verified per second on the MATH-500 golds, with 1 and 2 verifier workers.

    python benchmarks/bench_rewards.py --data-dir /path/to/data [--workers 1,2] [--out FILE]

Each gold is written as a model answer (`... \\boxed{gold}`) and scored against itself. "cold" is
the first pass (every gold parsed for the first time in its worker); "warm" repeats it (best of
--repeats), as GRPO does when it scores G responses per reference (each worker caches parsed golds).
Worker start-up is timed apart. Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from megatron_codistill.data import load_examples
from megatron_codistill.rewards import VerifierPool


def measure(golds: list[str], workers: int, timeout_s: float, repeats: int) -> dict:
    responses = [f"The final answer is $\\boxed{{{g}}}$." for g in golds]
    start = time.perf_counter()
    with VerifierPool(num_workers=workers, timeout_s=timeout_s) as pool:
        pool.wait_ready()
        row = {"workers": workers, "startup_s": time.perf_counter() - start}
        for name, passes in (("cold", 1), ("warm", repeats)):
            best = float("inf")
            for _ in range(passes):  # best of `repeats`: the machine may be shared
                t = time.perf_counter()
                results = pool.score(responses, golds)
                best = min(best, time.perf_counter() - t)
            row[name] = len(golds) / best
            row[f"{name}_correct"] = sum(r.score for r in results) / len(golds)
    return row


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| workers | start-up (s) | cold answers/s | warm answers/s | cold speed-up | warm speed-up "
        "| accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['startup_s']:.1f} | {r['cold']:.1f} | {r['warm']:.1f} | "
            f"{r['cold'] / base['cold']:.2f}x | {r['warm'] / base['warm']:.2f}x | "
            f"{100 * r['cold_correct']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="holds math500/test.jsonl")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--timeout", type=float, default=5.0, help="per-answer deadline (s)")
    p.add_argument("--repeats", type=int, default=3, help="warm passes (the best one is reported)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = p.parse_args()
    golds = [e.answer for e in load_examples(str(Path(args.data_dir) / "math500/test.jsonl"), preset="math")]
    rows = [measure(golds, int(w), args.timeout, args.repeats) for w in args.workers.split(",")]
    text = f"Reward throughput on {len(golds)} MATH-500 golds\n\n" + table(rows)
    Path(args.out).write_text(text)
    print(text, end="")  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()
