"""`codistill sweep --slurm` on a real (single-node, local) SLURM cluster: the same 2 x 2 grid of 2-step runs.

1. `--slurm --wait --cells 'mode=grpo_small,*'`: two cells as one 2-task job array through
   slurm/codistill.sbatch (`--args-file .../task_%a.args`); the command returns when both have finished.
2. `--slurm` again submits only the two unfinished cells, as another 2-task array. It is submitted held
   (`sbatch --hold` from the spec), so a third `--slurm` deterministically finds both tasks queued and
   submits nothing; released, both complete, and the aggregate of all four cells is checked by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from megatron_codistill.cli import main
from megatron_codistill.sweep.cells import expand, status
from megatron_codistill.sweep.slurm import SUBMISSIONS, task_args
from megatron_codistill.sweep.spec import load_spec
from tests.sweep.conftest import REPO, check_grid_summary, jsonl, md_table, tiny_grid

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "srun")
MISSING = [b for b in BINARIES if shutil.which(b) is None]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
WAIT_S = 1500  # generous: the runs share 2 CPU cores with whatever else runs

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"SLURM binaries absent: {MISSING} (run slurm/local_cluster.sh install)"),
    pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0,
                       reason="the local cluster runs munged and slurmd as root"),
]


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    """SLURM_CONF of a fresh local cluster; stopped (daemons and jobs) afterwards."""
    state = tmp_path_factory.mktemp("slurm")
    script = REPO / "slurm" / "local_cluster.sh"
    out = subprocess.run(["bash", str(script), "start"], env=dict(os.environ, LOCAL_SLURM_DIR=str(state / "c")),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"local_cluster.sh start failed:\n{out.stdout}\n{out.stderr}"
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("export SLURM_CONF=")]
    conf = line.split("=", 1)[1]
    yield conf
    subprocess.run(["bash", str(script), "stop"], env=dict(os.environ, SLURM_CONF=conf), timeout=120)


def _tasks(job: str) -> dict[str, str]:
    """{array task id: state} of job array `job` (a pending range such as 0-1 is one record)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    states = {}
    for line in out.stdout.splitlines():
        info = dict(re.findall(r"(\w+)=(\S*)", line))
        for part in info.get("ArrayTaskId", "").split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1) if lo else ():
                states[str(i)] = info["JobState"]
    return states


def _outputs(task_dir) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(task_dir.glob("*.out")))


def test_unfinished_cells_run_as_a_job_array(tmp_path, slurm_conf, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    slurm = {"cpus_per_task": 1, "sbatch_args": ["--mem=2G"]}
    spec_path = tiny_grid(tmp_path, slurm=slurm)
    spec = load_spec(spec_path)
    cells = {c.name: c for c in expand(spec)}
    assert main(["sweep", str(spec_path), "--slurm", "--wait", "--cells", "mode=grpo_small,*"]) == 0
    (first,) = jsonl(spec.out / "slurm" / SUBMISSIONS)
    assert first["tasks"] == {"0": "mode=grpo_small,seed=1", "1": "mode=grpo_small,seed=2"}, first
    assert "--wait" in first["command"] and "--array=0-1" in first["command"]
    assert _tasks(first["job_id"]) == {"0": "COMPLETED", "1": "COMPLETED"}, _outputs(Path(first["dir"]))
    assert [n for n, c in cells.items() if status(c) == "finished"] == ["mode=grpo_small,seed=1",
                                                                        "mode=grpo_small,seed=2"]
    capsys.readouterr()

    tiny_grid(tmp_path, slurm={**slurm, "sbatch_args": ["--mem=2G", "--hold"]})  # cells unchanged: not a new config
    assert main(["sweep", str(spec_path), "--slurm"]) == 0
    assert "submitted job array" in capsys.readouterr().out
    _, sub = jsonl(spec.out / "slurm" / SUBMISSIONS)
    assert sub["tasks"] == {"0": "mode=codistill,seed=1", "1": "mode=codistill,seed=2"}
    task_dir = Path(sub["dir"])
    for i, name in sub["tasks"].items():  # one argument per line: what the task passes to codistill.sbatch
        assert (task_dir / f"task_{i}.args").read_text().splitlines() == task_args(spec, cells[name])
        rec = json.loads((cells[name].dir / "cell.json").read_text())
        assert rec["launcher"] == "slurm" and rec["array_task"] == int(i) and rec["sbatch"] == sub["command"]
    assert "--array=0-1" in sub["command"] and "--hold" in sub["command"]
    job = sub["job_id"]
    assert set(_tasks(job).values()) == {"PENDING"}

    # Held, both tasks are in the queue: another --slurm leaves them alone.
    assert main(["sweep", str(spec_path), "--slurm"]) == 0
    assert len(jsonl(spec.out / "slurm" / SUBMISSIONS)) == 2
    assert subprocess.run(["scontrol", "release", job], capture_output=True, timeout=60).returncode == 0
    deadline = time.monotonic() + WAIT_S
    while not (set(_tasks(job).values()) <= TERMINAL):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], timeout=60)
            pytest.fail(f"array {job} not done after {WAIT_S} s:\n{_outputs(task_dir)}")
        time.sleep(2)
    assert _tasks(job) == {"0": "COMPLETED", "1": "COMPLETED"}, _outputs(task_dir)
    for name in sub["tasks"].values():
        c = cells[name]
        assert status(c) == "finished", _outputs(task_dir)
        assert [r["step"] for r in jsonl(c.dir / "metrics.jsonl")] == [0, 1, 2]
        (start,) = (c.dir / "slurm-logs" / "launches.log").read_text().splitlines()
        assert "restart=0" in start and "resume_from=none" in start

    capsys.readouterr()
    assert main(["sweep", str(spec_path), "--slurm"]) == 0  # nothing left to submit: it aggregates
    assert len(jsonl(spec.out / "slurm" / SUBMISSIONS)) == 2
    capsys.readouterr()
    assert main(["sweep", str(spec_path), "--aggregate-only"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Sweep grid: 4 of 4 cells finished")
    check_grid_summary(spec.out, text)
    walls = {r["mode"]: r for r in md_table(text, "mode") if r["metric"] == "wall time per cell (s)"}
    assert walls["codistill"]["n"] == "2" and walls["grpo_small"]["n"] == "2"  # from each launches.log
