"""A kill -9 at any moment loses at most the steps since the last checkpoint, and a resumed run
continues exactly (bitwise on CPU) as the uninterrupted one would have."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.trainer.conftest import FAST, TINY

TIMING = ("time/", "timeline/", "perf/", "rollout/sync_seconds", "rollout/sync_mb_per_s")  # wall-clock measurements
# a fresh job: no rendezvous variables inherited from in-process runs of other tests
ENV = {k: v for k, v in os.environ.items()
       if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}


def train_cmd(run_dir, *extra):
    overrides = [o for o in FAST if not o.startswith(("run.steps", "run.eval_every"))]
    return [sys.executable, "-m", "megatron_codistill.cli", "train", str(TINY), f"run.dir={run_dir}",
            *overrides, "run.steps=6", "run.eval_every=0", "checkpoint.every=2", *extra]


def last_rows(run_dir) -> dict[int, dict]:
    """step -> metrics of the last record of each step, timings removed."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = {k: v for k, v in row.items() if not k.startswith(TIMING)}
    return out


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(train_cmd(full), check=True, capture_output=True, timeout=600, env=ENV)

    proc = subprocess.Popen(train_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    marker = killed / "checkpoints" / "step_000002" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never completed its step-2 checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step_000006").exists()

    subprocess.run(train_cmd(killed, "--resume"), check=True, capture_output=True, timeout=600, env=ENV)
    a, b = last_rows(full), last_rows(killed)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(3, 7):
        assert a[step] == b[step], f"step {step} differs after resume"


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run_dir, "checkpoint.every=0", "run.steps=200"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while (not metrics.exists() or not metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    step = max(last_rows(run_dir))
    assert "preempted at step" in err
    assert (run_dir / "checkpoints" / f"step_{step:06d}" / "COMPLETE").exists()
