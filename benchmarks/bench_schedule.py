"""Step time by phase of the three schedules, and of GRPO on the large model, in one run.

A pair large enough that compute dominates (small 2 x 128, large 4 x 256) on the tiny task, random
weights (timing only), the embedded engine in a rollout worker process; the trainer and the worker
get one torch thread each (2 cores). Arms: grpo_large (the large model generates and trains),
codistill sequential / overlap / async (k = 1), in two regimes: the engine decoding all rollouts at once,
and 8 at a time (decode-bound, as generation is on GPUs). The step time of an arm is the mean of its steps after
the first `--skip`; since the arms' rollouts differ in length, times are also given per 1,000
response tokens. The planner's schedule model (planner.timing.schedule_step_time) predicts overlap and
async from the sequential arm's phase times; the table puts its ratios beside the measured ones, and
one overlap step of each regime is drawn as a timeline. --profile: where the time of a codistill step
goes (model math vs the rest).

    python benchmarks/bench_schedule.py [--steps 8] [--skip 2] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

from tiny_runs import ROOT, TINY, train

from megatron_codistill.planner.timing import schedule_step_time

SMALL = ("small.arch={family: llama, hidden_size: 128, num_layers: 2, num_attention_heads: 4, "
         "num_key_value_heads: 2, ffn_hidden_size: 256, vocab_size: 16, max_position_embeddings: 64, "
         "tie_word_embeddings: false}")
LARGE = ("large.arch={family: llama, hidden_size: 256, num_layers: 4, num_attention_heads: 8, "
         "num_key_value_heads: 4, ffn_hidden_size: 512, vocab_size: 16, max_position_embeddings: 64, "
         "tie_word_embeddings: false}")
ARMS = {
    "grpo_large": ["algorithm.mode=grpo", "algorithm.grpo_model=large", "scheduler.mode=sequential"],
    "codistill sequential": ["scheduler.mode=sequential"],
    "codistill overlap": ["scheduler.mode=overlap"],
    "codistill async k=1": ["scheduler.mode=async", "scheduler.max_staleness=1"],
}
REGIMES = {
    "batched decoding": ["rollout.max_batch_size=128"],
    "decode-bound": ["rollout.max_batch_size=8"],
}
"""The engine decodes all 128 rollouts at once (CPU decoding is then nearly as efficient as a training
forward), or 8 at a time: decoding bound by per-token latency, as on GPUs, where generation dominates."""
PHASES = ("launch", "generate", "reward", "exchange", "score", "update_small", "sync", "launch_next",
          "update_large")


def common(steps: int) -> list[str]:
    return [SMALL, LARGE, f"run.steps={steps}", "run.eval_every=0", "checkpoint.every=0",
            "warm_start.small_steps=0", "warm_start.large_steps=0", "algorithm.prompts_per_step=16",
            "algorithm.group_size=8", "small.micro_batch_size=32", "large.micro_batch_size=32",
            "rollout.sampling.max_new_tokens=32", "rollout.worker_process=true", "rollout.worker_threads=1",
            "small.optimizer.lr=1e-4", "large.optimizer.lr=1e-4", "logging.tensorboard=false"]


def summarise(rows: list[dict], skip: int) -> dict:
    steps = [r for r in rows if r["step"] > skip]
    mean = lambda k: statistics.mean(r.get(k, 0.0) for r in steps)  # noqa: E731
    out = {p: mean(f"time/{p}") for p in PHASES}
    out["step"] = mean("time/step")
    out["engine_generate"] = statistics.mean(r["timeline/engine_generate/end"] - r["timeline/engine_generate/start"]
                                             for r in steps)
    generator = "large" if "large/response_length" in steps[0] else "small"
    out["tokens"] = mean(f"{generator}/response_length") * 16 * 8
    out["s_per_1k_tokens"] = out["step"] / out["tokens"] * 1000
    return out


def predicted(seq: dict) -> dict[str, float]:
    """Planner ratios from the sequential arm's phases: generation = the engine's own time."""
    phases = {"generate": seq["engine_generate"], "score": seq["score"], "update_small": seq["update_small"],
              "update_large": seq["update_large"],
              "sync": seq["sync"] + seq["reward"] + seq["exchange"]}
    total = schedule_step_time(phases, "sequential")
    return {s: schedule_step_time(phases, s) / total for s in ("overlap", "async")}


def timeline(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = rows[len(rows) // 2]
    lanes = [("trainer", p) for p in ("generate", "reward", "exchange", "score", "update_small", "sync",
                                      "update_large")] + [("rollout worker", "engine_generate")]
    fig, ax = plt.subplots(figsize=(8, 1.9))
    for i, (lane, phase) in enumerate(lanes):
        key = f"timeline/{phase}/start"
        if key not in row:
            continue
        start, end = row[key], row[f"timeline/{phase}/end"]
        y = 1 if lane == "trainer" else 0
        ax.barh(y, end - start, left=start, color=f"C{i}", edgecolor="black", linewidth=0.4)
        if end - start > 0.04 * row["time/step"]:
            label = {"engine_generate": "generate (for this step)", "update_small": "U small",
                     "update_large": "U large"}.get(phase, phase)
            ax.text((start + end) / 2, y, label, ha="center", va="center", fontsize=7)
    ax.axvline(0, color="grey", linewidth=0.6)
    ax.axvline(row["time/step"], color="grey", linewidth=0.6)
    ax.set_yticks([0, 1], ["rollout worker", "trainer"])
    ax.set_xlabel(f"seconds from the start of step {row['step']} (overlap schedule)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile(out: Path, steps: int) -> None:
    """cProfile of `steps` codistill steps (sequential, in-process engine) after one warm-up step: the
    top functions by own time and the share of the step in each phase's main calls."""
    from megatron_codistill.config import load_config
    from megatron_codistill.trainer.build import build_run

    run_dir = Path(tempfile.mkdtemp(prefix="bench_schedule_profile_"))
    cfg = load_config(TINY, [*common(steps + 1), f"run.dir={run_dir}", "scheduler.mode=sequential",
                             "rollout.worker_process=false", "logging.progress=false"])
    run = build_run(cfg)
    run.scheduler.step(1)
    prof = cProfile.Profile()
    prof.enable()
    for t in range(2, steps + 2):
        run.scheduler.step(t)
    prof.disable()
    run.engine.shutdown()
    stats = pstats.Stats(prof).strip_dirs()
    total = stats.total_tt
    calls = {f"{Path(k[0]).name}:{k[2]}": v[3] for k, v in stats.stats.items()}  # cumulative seconds
    watch = ["step.py:collect", "step.py:score", "step.py:update", "build.py:sync_weights",
             "train_step.py:train_step", "logprobs.py:forward_logprobs", "optimizer.py:step",
             "distrib_optimizer.py:step", "exchange.py:gather_batch", "exchange.py:take_rows",
             "base.py:from_rollouts", "objectives.py:small_inputs", "objectives.py:large_inputs",
             "embedded.py:generate", "schedule.py:run_schedule"]
    with open(out, "w") as f:
        f.write(f"{steps} steps, {total:.2f} s in all\n\n| call | cumulative s | share |\n|---|---|---|\n")
        for name in watch:
            hits = [v for k, v in calls.items() if k.endswith(name)]
            if hits:
                f.write(f"| {name} | {max(hits):.2f} | {max(hits) / total:.1%} |\n")
        f.write("\n")
        pstats.Stats(prof, stream=f).strip_dirs().sort_stats("tottime").print_stats(30)
    print(f"profile: {out}")


def table(results: dict[str, dict]) -> list[str]:
    """Phase table and ratio table of one regime's arms."""
    seq, ov, asy = (results[f"codistill {m}"] for m in ("sequential", "overlap", "async k=1"))
    pred = predicted(seq)
    lines = ["| arm | " + " | ".join(PHASES) + " | engine generate | step s | resp. tokens | s / 1k tokens |",
             "|---|" + "---|" * (len(PHASES) + 4)]
    for arm, r in results.items():
        tail = f"{r['engine_generate']:.2f} | {r['step']:.2f} | {r['tokens']:.0f} | {r['s_per_1k_tokens']:.2f}"
        lines.append(f"| {arm} | " + " | ".join(f"{r[p]:.2f}" for p in PHASES) + f" | {tail} |")
    share = seq["engine_generate"] / seq["step"]
    return lines + [
        "", "| ratio | measured | planner (from the sequential phases) | target |", "|---|---|---|---|",
        f"| overlap / sequential (step) | {ov['step'] / seq['step']:.2f} | {pred['overlap']:.2f} | <= 0.75 |",
        f"| async / sequential (step) | {asy['step'] / seq['step']:.2f} | {pred['async']:.2f} | |",
        f"| codistill overlap / grpo_large (per token) | "
        f"{ov['s_per_1k_tokens'] / results['grpo_large']['s_per_1k_tokens']:.2f} | | <= 0.8 |",
        "", f"Generation is {share:.0%} of a sequential codistill step here: overlap can hide at most "
        f"min(generate, update_large) = {min(seq['engine_generate'], seq['update_large']):.2f} s of "
        f"{seq['step']:.2f} s."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2, help="steps left out of the means (start-up)")
    ap.add_argument("--profile", action="store_true", help="also profile the codistill sequential arm")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the trainer's torch threads; the worker gets its own one
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_schedule_"))
    sections, everything = [], {}
    for regime, engine in REGIMES.items():
        results, rows_of = {}, {}
        for arm, extra in ARMS.items():
            name = f"{regime}_{arm}".replace(" ", "_").replace("=", "")
            rows = train(work / name, [*common(args.steps), *engine, *extra])
            rows_of[arm], results[arm] = rows, summarise(rows, args.skip)
            print(f"{regime}, {arm}: {results[arm]['step']:.2f} s/step", flush=True)
        everything[regime] = results
        sections.append(f"### {regime} ({' '.join(engine)})\n\n" + "\n".join(table(results)))
        timeline(rows_of["codistill overlap"], out / f"schedule_timeline_{regime.replace(' ', '_')}.png")
    command = " ".join(["python", "benchmarks/bench_schedule.py", *sys.argv[1:]])
    text = (f"Step time by phase, seconds (mean of steps {args.skip + 1}-{args.steps}), 2 CPU cores, trainer and "
            f"rollout worker 1 torch thread each; small 2x128, large 4x256, 16 prompts x G 8, <= 32 new tokens, "
            f"random weights.\n\n" + "\n\n".join(sections) + f"\n\nCommand: `{command}`.\n")
    print(text)
    (out / "schedule.md").write_text(text)
    (out / "schedule_runs.json").write_text(json.dumps(everything, indent=1))
    if args.profile:
        profile(out / "schedule_profile.md", max(args.steps // 2, 3))


if __name__ == "__main__":
    main()
