"""Reward throughput: answers verified per second on the MATH-500 golds, with 1 and 2 verifier workers.

    python benchmarks/bench_rewards.py --data-dir /path/to/data [--workers 1,2] [--out FILE]

Three passes over the 500 golds, each written as a model answer (`... \\boxed{...}`):
- "same text": the gold itself (accepted without sympy: the cheap case);
- "wrong, cold": the gold with its last digit changed (or `+ 1` appended), the first time each
  worker sees the reference: extraction, both parses and math-verify's comparison, as for most
  responses early in RL;
- "wrong, warm": the same again (best of --repeats), references already parsed in their worker's
  cache, as when GRPO scores the G responses of a prompt.
Worker start-up is timed apart. Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from megatron_codistill.data import load_examples
from megatron_codistill.rewards import VerifierPool


def perturb(gold: str) -> str:
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if not digits:
        return gold + " + 1"
    i = digits[-1]
    return gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1 :]


def timed(pool: VerifierPool, answers: list[str], golds: list[str], passes: int) -> tuple[float, float]:
    """(answers per second of the best pass, mean score)."""
    responses = [f"The final answer is $\\boxed{{{a}}}$." for a in answers]
    best, results = float("inf"), []
    for _ in range(passes):
        t = time.perf_counter()
        results = pool.score(responses, golds)
        best = min(best, time.perf_counter() - t)
    return len(golds) / best, sum(r.score for r in results) / len(golds)


def measure(golds: list[str], workers: int, timeout_s: float, repeats: int) -> dict:
    start = time.perf_counter()
    with VerifierPool(num_workers=workers, timeout_s=timeout_s) as pool:
        pool.wait_ready()
        row = {"workers": workers, "startup_s": time.perf_counter() - start}
        wrong = [perturb(g) for g in golds]
        row["wrong_cold"], row["wrong_cold_score"] = timed(pool, wrong, golds, 1)
        row["wrong_warm"], _ = timed(pool, wrong, golds, repeats)
        row["same"], row["same_score"] = timed(pool, golds, golds, repeats)
        row["restarts"] = pool.restarts
    return row


def table(rows: list[dict]) -> str:
    base = rows[0]
    cols = [("same", "same text"), ("wrong_cold", "wrong, cold"), ("wrong_warm", "wrong, warm")]
    head = ["workers", "start-up (s)"] + [f"{name} (answers/s)" for _, name in cols]
    head += [f"{name} speed-up" for _, name in cols] + ["accepted same / wrong", "timeouts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["workers"]), f"{r['startup_s']:.1f}"] + [f"{r[k]:.1f}" for k, _ in cols]
        cells += [f"{r[k] / base[k]:.2f}x" for k, _ in cols]
        cells += [f"{100 * r['same_score']:.1f}% / {100 * r['wrong_cold_score']:.1f}%", str(r["restarts"])]
        lines.append("| " + " | ".join(cells) + " |")
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
