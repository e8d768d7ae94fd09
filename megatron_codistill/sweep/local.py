"""Run a sweep's cells on this machine, one after another, each in its own `codistill train --resume`.

Finished cells are skipped; a partial one continues from its newest checkpoint. Each attempt appends
its output to `<cell>/train.log` and a line {start, end, wall_s, returncode} to `<cell>/attempts.jsonl`.
A failing cell is reported with its log and the next cell runs. A cell held by another `codistill sweep`
(a lock on `<cell>/.lock`) is left to it. Ctrl-C (or SIGTERM) stops the current cell the way SLURM
stops a job: SIGTERM, so the trainer checkpoints at its next step boundary and the cell resumes later.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from megatron_codistill.log import get_logger
from megatron_codistill.sweep.cells import Cell, check_record, local_command, record, status
from megatron_codistill.sweep.spec import SweepSpec

log = get_logger(__name__)
ATTEMPTS = "attempts.jsonl"
LOG = "train.log"


@dataclass
class Outcome:
    cell: Cell
    result: str
    """"skipped" (finished before), "finished", "failed" or "busy" (another sweep runs it)."""
    wall_s: float = 0.0
    returncode: int | None = None
    log: Path | None = None


def _tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []
    return "\n".join("    " + ln for ln in lines)


def run_cell(spec: SweepSpec, cell: Cell, *, env: dict[str, str] | None = None) -> Outcome:
    """One attempt at `cell` (unless finished or locked); the outcome says what happened."""
    if status(cell) == "finished":
        return Outcome(cell, "skipped")
    cell.dir.mkdir(parents=True, exist_ok=True)
    with open(cell.dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Outcome(cell, "busy")
        if status(cell) == "finished":  # another sweep finished it while we looked
            return Outcome(cell, "skipped")
        cmd = local_command(spec, cell)
        record(spec, cell, "local", cmd)
        log_path = cell.dir / LOG
        start, t0 = datetime.now().astimezone(), time.monotonic()
        with open(log_path, "a") as out:
            out.write(f"==== codistill sweep: attempt at {start.isoformat(timespec='seconds')}\n"
                      f"==== {shlex.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    start_new_session=True)  # our Ctrl-C reaches it as SIGTERM, below
            stopped = False
            try:
                rc = proc.wait()
            except KeyboardInterrupt:
                stopped = True
                log.info("stopping %s: SIGTERM, waiting for its checkpoint", cell.name)
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait()
        wall = time.monotonic() - t0
        with open(cell.dir / ATTEMPTS, "a") as f:
            f.write(json.dumps({"start": start.isoformat(timespec="seconds"),
                                "end": datetime.now().astimezone().isoformat(timespec="seconds"),
                                "wall_s": round(wall, 3), "returncode": rc}) + "\n")
    if stopped:
        raise KeyboardInterrupt
    done = status(cell) == "finished"
    return Outcome(cell, "finished" if rc == 0 and done else "failed", wall, rc, log_path)


def run_local(spec: SweepSpec, cells: list[Cell], *,
              env_for: Callable[[Cell], dict[str, str]] | None = None) -> list[Outcome]:
    """Run every unfinished cell of `cells` in order; `env_for(cell)` adds environment variables (tests)."""
    for cell in cells:  # before any compute: no started cell may have changed its overrides
        check_record(cell)
    outcomes = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None  # SIGTERM stops the cell cleanly too
    try:
        for i, cell in enumerate(cells, 1):
            outcomes.append(_one(spec, cell, f"[{i}/{len(cells)}] {cell.name}", env_for))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return outcomes


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _one(spec: SweepSpec, cell: Cell, where: str, env_for) -> Outcome:
    """Run one cell and log what happened (the tail of its log on failure)."""
    state = status(cell)
    if state != "finished":
        log.info("%s: %s (log: %s)", where, "resuming" if state == "partial" else "starting", cell.dir / LOG)
    o = run_cell(spec, cell, env=env_for(cell) if env_for else None)
    if o.result == "skipped":
        log.info("%s: finished before, skipped", where)
    elif o.result == "busy":
        log.info("%s: another `codistill sweep` is running it, skipped", where)
    elif o.result == "finished":
        log.info("%s: finished in %.1f s", where, o.wall_s)
    else:
        why = f"exit status {o.returncode}" if o.returncode else "exited 0 before run.steps (preempted?)"
        log.warning("%s: FAILED (%s) after %.1f s; log: %s\n%s", where, why, o.wall_s, o.log, _tail(o.log))
    return o
