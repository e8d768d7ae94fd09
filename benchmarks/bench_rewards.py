"""Reward throughput: answers verified per second on the MATH-500 golds, with 1 and 2 verifier workers.

    python benchmarks/bench_rewards.py --data-dir /path/to/data [--workers 1,2] [--limit N] [--out FILE]

Three passes over the 500 golds, each written as a model answer (`... \\boxed{...}`):
- "same text": the gold itself (accepted without sympy: the cheap case);
- "wrong, cold": the gold with its last digit changed (or `+ 1` appended), the first time each
  worker sees the reference: extraction, both parses and math-verify's comparison, as for most
  responses early in RL;
- "wrong, warm": the same again, references already parsed in their worker's cache, as when GRPO
  scores the G responses of a prompt.
Two rates per pass: wall-clock answers/s (what this machine gave, shared or not), and answers / CPU
seconds of the busiest worker (read from /proc: the rate with a free core per worker). Worker
start-up (imports and the warm-up self-check) is timed apart. "restarts" lists the workers replaced
during the passes by reason (`VerifierPool.restart_reasons`: a worker whose budget fired retires).
Prints a markdown table and writes it to --out (default benchmarks/results/rewards.md); `--limit`
takes the first N golds for a quick smoke run.
"""

from __future__ import annotations

import argparse
import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(pool: VerifierPool, answers: list[str], golds: list[str]) -> dict:
    responses = [f"The final answer is $\\boxed{{{a}}}$." for a in answers]
    cpu0 = [cpu_seconds(p) for p in pool.pids()]
    t = time.perf_counter()
    results = pool.score(responses, golds)
    wall = time.perf_counter() - t
    busiest = max(cpu_seconds(p) - c for p, c in zip(pool.pids(), cpu0))
    return {"wall": len(golds) / wall, "cpu": len(golds) / max(busiest, 1e-9),
            "accepted": sum(r.score for r in results) / len(golds)}


def measure(golds: list[str], workers: int, timeout_s: float) -> list[dict]:
    start = time.perf_counter()
    with VerifierPool(num_workers=workers, timeout_s=timeout_s) as pool:
        pool.wait_ready()
        startup = time.perf_counter() - start
        wrong = [perturb(g) for g in golds]
        rows = [{"pass": "same text", **timed(pool, golds, golds)},
                {"pass": "wrong, cold", **timed(pool, wrong, golds)},
                {"pass": "wrong, warm", **timed(pool, wrong, golds)}]
        restarts = ", ".join(f"{k} {v}" for k, v in sorted(pool.restart_reasons.items())) or "0"
        for r in rows:
            r.update(workers=workers, startup=startup, restarts=restarts)
    return rows


def table(rows: list[dict]) -> str:
    base = {r["pass"]: r for r in rows if r["workers"] == rows[0]["workers"]}
    head = ["workers", "pass", "answers/s (wall)", "answers/s (free cores)", "speed-up (wall)",
            "speed-up (free cores)", "accepted", "start-up (s)", "restarts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        b = base[r["pass"]]
        cells = [str(r["workers"]), r["pass"], f"{r['wall']:.1f}", f"{r['cpu']:.1f}",
                 f"{r['wall'] / b['wall']:.2f}x", f"{r['cpu'] / b['cpu']:.2f}x", f"{100 * r['accepted']:.1f}%",
                 f"{r['startup']:.1f}", r["restarts"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="holds math500/test.jsonl")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--timeout", type=float, default=5.0, help="per-answer budget (CPU seconds)")
    p.add_argument("--limit", type=int, default=None, help="first N golds only (a smoke run)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "rewards.md"))
    args = p.parse_args()
    golds = [e.answer for e in load_examples(str(Path(args.data_dir) / "math500/test.jsonl"), preset="math",
                                             limit=args.limit)]
    load_before = os.getloadavg()[0]
    rows = [r for w in args.workers.split(",") for r in measure(golds, int(w), args.timeout)]
    text = (
        f"Reward throughput on {len(golds)} MATH-500 golds ({os.cpu_count()} CPU cores, 1-minute load "
        f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after)\n\n" + table(rows)
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text, end="")  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()
