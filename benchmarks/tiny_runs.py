"""Shared by the trainer benchmarks: run the tiny example as subprocesses and read their metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny_cpu" / "config.yaml"
QUIET = ["logging.progress=false", "logging.tensorboard=false"]
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def train(run_dir: Path, overrides: list[str], *, nproc: int = 1) -> list[dict]:
    """Run `codistill train` on the tiny config; returns the metrics rows. Raises with the log on failure."""
    launcher = [sys.executable, "-m", "megatron_codistill.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
        "-m", "megatron_codistill.cli"]
    cmd = [*launcher, "train", str(TINY), f"run.dir={run_dir}", *QUIET, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def warm_started(seed: int) -> list[str]:
    """Warm-start both models once for `seed` (HF export at step 0, cached under runs/bench_warm/) and
    return the overrides that start a run from them without another warm start."""
    out = ROOT / "runs" / "bench_warm" / f"seed{seed}"
    hf = out / "exports" / "step_000000"
    if not (hf / "small" / "config.json").exists():
        train(out, [f"run.seed={seed}", "run.steps=0", "checkpoint.export_hf=true", "checkpoint.keep_last=0"])
    tok = ROOT / "examples" / "tiny_cpu" / "tokenizer"
    return [f"small.checkpoint={hf / 'small'}", f"large.checkpoint={hf / 'large'}", f"small.tokenizer={tok}",
            f"large.tokenizer={tok}", "warm_start.small_steps=0", "warm_start.large_steps=0", f"run.seed={seed}"]
