"""The real batch script on a real (single-node) SLURM cluster, training the tiny CPU example.

1. `slurm/codistill.sbatch` with 1 node x 2 trainer processes (gloo) runs to COMPLETED and writes
   metrics for every step and a final checkpoint.
2. A second run gets `scancel --batch --signal=USR1` mid-run (what `--signal=B:USR1@N` sends before a
   time limit): the trainer checkpoints, the script requeues the job, and the restarted job resumes
   from that checkpoint (its first step is the checkpoint's step + 1) and completes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "srun", "sinfo")
MISSING = [b for b in BINARIES if shutil.which(b) is None]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}
WAIT_S = 1500  # generous: the example shares 2 CPU cores with whatever else runs

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING),
                       reason=f"SLURM binaries absent: {MISSING} (run slurm/local_cluster.sh install)"),
    pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0,
                       reason="the local cluster runs munged and slurmd as root"),
]
# The tiny example, shortened: a few supervised warm-start steps, no evaluation, quiet logs.
SHORT = ["warm_start.small_steps=5", "warm_start.large_steps=5", "run.eval_every=0",
         "logging.tensorboard=false", "logging.progress=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a fresh local cluster; stopped (daemons and jobs) afterwards."""
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, LOCAL_SLURM_DIR=str(state / "cluster"))
    script = REPO / "slurm" / "local_cluster.sh"
    out = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"local_cluster.sh start failed:\n{out.stdout}\n{out.stderr}"
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("export SLURM_CONF=")]
    conf = line.split("=", 1)[1]
    yield {"SLURM_CONF": conf, "work": state}
    subprocess.run(["bash", str(script), "stop"], env=dict(os.environ, SLURM_CONF=conf), timeout=120)


def _env(cluster) -> dict:
    return dict(os.environ, SLURM_CONF=cluster["SLURM_CONF"])


def _submit(cluster, name: str, overrides: list[str]) -> tuple[str, Path, Path]:
    """Submit the tiny example (1 node x 2 processes); returns (job id, run dir, log dir)."""
    work = cluster["work"]
    run_dir, log_dir = work / f"{name}-run", work / f"{name}-logs"
    cmd = ["sbatch", "--parsable", f"--job-name={name}", "--nodes=1", "--cpus-per-task=2",
           f"--output={work}/%x-%j.out", f"--chdir={REPO}", str(REPO / "slurm" / "codistill.sbatch"),
           "--python", sys.executable, "--nproc-per-node", "2", "--run-dir", str(run_dir),
           "--log-dir", str(log_dir), "examples/tiny_cpu/config.yaml", *SHORT, *overrides]
    out = subprocess.run(cmd, env=_env(cluster), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0], run_dir, log_dir


def _job(cluster, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=_env(cluster), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"scontrol show job {job_id}: {out.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _output(cluster, name: str, job_id: str) -> str:
    path = cluster["work"] / f"{name}-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no output file {path})"


def _wait(cluster, name: str, job_id: str, until=None) -> dict[str, str]:
    """Poll until the job is in a terminal state (or `until()` holds); fail with its output if it never is."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        info = _job(cluster, job_id)
        if (until is not None and until()) or (until is None and info["JobState"] in TERMINAL):
            return info
        if until is not None and info["JobState"] in TERMINAL:
            pytest.fail(f"job {job_id} ended ({info['JobState']}) before the awaited condition:\n"
                        f"{_output(cluster, name, job_id)[-6000:]}")
        time.sleep(2)
    subprocess.run(["scancel", job_id], env=_env(cluster), timeout=60)
    pytest.fail(f"job {job_id} not done after {WAIT_S} s:\n{_output(cluster, name, job_id)[-6000:]}")


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_tiny_example_completes_through_sbatch(cluster):
    job, run_dir, log_dir = _submit(cluster, "tiny", ["run.steps=3", "checkpoint.every=0"])
    info = _wait(cluster, "tiny", job)
    log = _output(cluster, "tiny", job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-6000:]
    assert info["Restarts"] == "0"
    assert _steps(run_dir) == [1, 2, 3], log[-6000:]
    assert (run_dir / "checkpoints" / "step_000003" / "COMPLETE").exists()
    # Two gloo ranks on one node, and the run was started with --resume (a fresh start: nothing to take).
    assert "1 trainer node(s) x 2 process(es)" in log
    (start,) = (log_dir / "launches.log").read_text().splitlines()
    assert "restart=0" in start and "resume_from=none" in start and "metrics_lines=0" in start


def test_usr1_checkpoints_requeues_and_resumes(cluster):
    total = 10
    job, run_dir, log_dir = _submit(cluster, "preempt", [f"run.steps={total}", "checkpoint.every=0"])
    # Mid-run: at least two RL steps logged, so the trainer's signal handlers are in place.
    _wait(cluster, "preempt", job, until=lambda: len(_steps(run_dir)) >= 2)
    sig = subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=_env(cluster), capture_output=True,
                         text=True, timeout=60)
    assert sig.returncode == 0, sig.stderr
    info = _wait(cluster, "preempt", job)
    log = _output(cluster, "preempt", job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-6000:]
    assert info["Restarts"] == "1", log[-6000:]

    preempted = [int(n) for n in re.findall(r"preempted at step (\d+)", log)]
    assert preempted, log[-6000:]
    n = preempted[0]
    assert 2 <= n < total
    assert "requeueing job" in log
    # The checkpoint written on the signal is the one the restart took.
    first, second = (log_dir / "launches.log").read_text().splitlines()
    assert "restart=0" in first and "resume_from=none" in first
    assert "restart=1" in second and f"resume_from=step_{n:06d}" in second
    lines_before = int(re.search(r"metrics_lines=(\d+)", second).group(1))
    steps = _steps(run_dir)
    assert steps[:lines_before] == list(range(1, n + 1))
    # The resumed run's first step is the checkpoint's step + 1, and it runs to the end.
    assert steps[lines_before:] == list(range(n + 1, total + 1)), steps
    assert (run_dir / "checkpoints" / f"step_{total:06d}" / "COMPLETE").exists()
