"""Submit a sweep's unfinished cells as one SLURM job array through `slurm/codistill.sbatch`.

Task i of the array reads its arguments from `<out>/slurm/<stamp>/task_<i>.args` (one per line: launcher
options, the base config, the cell's overrides with its run.dir) through the script's `--args-file
...task_%a.args`; the script runs `codistill train ... --resume` as for any job, so a requeued or
resubmitted task continues from its checkpoint. Each submission is a line of
`<out>/slurm/submissions.jsonl` ({job_id, tasks: {index: cell}}); cells of an earlier submission that
`squeue` still lists are not submitted again. Per cell, the launcher's `launches.log` goes to
`<cell>/slurm-logs/`, the job's output to `<out>/slurm/<stamp>/<name>-<array id>_<task>.out`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from megatron_codistill.log import get_logger
from megatron_codistill.sweep.cells import Cell, check_record, record
from megatron_codistill.sweep.spec import SweepSpec

log = get_logger(__name__)
SCRIPT = Path(__file__).resolve().parents[2] / "slurm" / "codistill.sbatch"
SUBMISSIONS = "submissions.jsonl"
LOGS = "slurm-logs"


@dataclass
class Submission:
    command: list[str]
    """The sbatch command line."""
    tasks: dict[int, Cell]
    args: dict[int, list[str]]
    """Array task -> the arguments its file holds."""
    job_id: str | None = None
    skipped: list[str] = field(default_factory=list)
    """Cells left out because an earlier submission still runs them."""


def script(spec: SweepSpec) -> Path:
    path = Path(spec.slurm.script).absolute() if spec.slurm.script else SCRIPT
    if not path.is_file():
        raise ValueError(f"{spec.path}: slurm.script: {path} does not exist (the sweep submits through "
                         "slurm/codistill.sbatch)")
    return path


def task_args(spec: SweepSpec, cell: Cell) -> list[str]:
    """The arguments of one array task: codistill.sbatch options, then CONFIG and the overrides."""
    s = spec.slurm
    return ["--python", s.python or sys.executable, "--nproc-per-node", str(s.nproc_per_node),
            "--log-dir", str(cell.dir / LOGS), *s.launcher_args, str(spec.base), *cell.overrides]


def sbatch_command(spec: SweepSpec, n_tasks: int, task_dir: Path, *, wait: bool = False) -> list[str]:
    s = spec.slurm
    array = f"0-{n_tasks - 1}" + (f"%{s.max_parallel}" if s.max_parallel else "")
    cmd = ["sbatch", "--parsable", f"--job-name={spec.name}", f"--array={array}", f"--nodes={s.nodes}",
           f"--output={task_dir}/%x-%A_%a.out"]
    cmd += [f"--partition={s.partition}"] if s.partition else []
    cmd += [f"--time={s.time}"] if s.time else []
    cmd += [f"--cpus-per-task={s.cpus_per_task}"] if s.cpus_per_task else []
    cmd += ["--wait"] if wait else []
    return [*cmd, *s.sbatch_args, str(script(spec)), "--args-file", str(task_dir / "task_%a.args")]


def in_flight(spec: SweepSpec) -> dict[str, str]:
    """{cell name: "job_task"} of the cells an earlier submission still has queued or running."""
    path = spec.out / "slurm" / SUBMISSIONS
    if not path.exists():
        return {}
    if shutil.which("squeue") is None:
        raise ValueError(f"squeue not found: cannot tell whether the jobs in {path} still run")
    busy = {}
    for line in path.read_text().splitlines():
        sub = json.loads(line)
        out = subprocess.run(["squeue", "-h", "-r", "-j", sub["job_id"], "-o", "%i"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:  # the job is gone from the controller: nothing of it runs
            continue
        for task in out.stdout.split():
            _, _, index = task.partition("_")
            if index in sub["tasks"]:
                busy[sub["tasks"][index]] = task
    return busy


def submit(spec: SweepSpec, cells: list[Cell], *, dry_run: bool = False, wait: bool = False) -> Submission | None:
    """Submit `cells` (the unfinished ones) as one array; None when there is nothing to submit."""
    busy = in_flight(spec) if not dry_run else {}
    todo = [c for c in cells if c.name not in busy]
    for name in busy:
        log.info("%s: still queued or running as job %s, not submitted again", name, busy[name])
    if not todo:
        return None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    task_dir = spec.out / "slurm" / stamp
    sub = Submission(sbatch_command(spec, len(todo), task_dir, wait=wait), dict(enumerate(todo)),
                     {i: task_args(spec, c) for i, c in enumerate(todo)}, skipped=sorted(busy))
    if dry_run:
        return sub
    if shutil.which("sbatch") is None:
        raise ValueError("sbatch not found: --slurm needs the SLURM client commands on this machine")
    for cell in todo:
        check_record(cell)
    task_dir.mkdir(parents=True)
    for i, cell in sub.tasks.items():
        (task_dir / f"task_{i}.args").write_text("".join(a + "\n" for a in sub.args[i]))
        record(spec, cell, "slurm", [str(script(spec)), *sub.args[i]], sbatch=sub.command, array_task=i,
               args_file=str(task_dir / f"task_{i}.args"))
    log.info("submitting %d cells: %s", len(todo), shlex.join(sub.command))
    proc = subprocess.Popen(sub.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # --parsable prints the id at submission; with --wait sbatch then blocks until every task ended.
    first = proc.stdout.readline().strip()
    sub.job_id = first.split(";")[0] or None
    if sub.job_id:
        with open(spec.out / "slurm" / SUBMISSIONS, "a") as f:
            f.write(json.dumps({"job_id": sub.job_id, "dir": str(task_dir), "command": sub.command,
                                "tasks": {str(i): c.name for i, c in sub.tasks.items()}}) + "\n")
        log.info("job array %s: %d tasks; outputs in %s", sub.job_id, len(todo), task_dir)
    rest, err = proc.communicate()
    if proc.returncode != 0 and not sub.job_id:
        raise ValueError(f"sbatch failed (exit {proc.returncode}): {err.strip() or rest.strip()}")
    if proc.returncode != 0:
        log.warning("job array %s: some tasks failed (sbatch --wait exit %d); see %s", sub.job_id,
                    proc.returncode, task_dir)
    return sub
