"""The local runner's edges, injected: Ctrl-C while a cell runs, and a cell another sweep holds."""

from __future__ import annotations

import fcntl
import signal
import subprocess

import pytest

from megatron_codistill.sweep.cells import expand
from megatron_codistill.sweep.local import run_cell, run_local
from megatron_codistill.sweep.spec import load_spec
from tests.sweep.conftest import jsonl, tiny_grid


def test_ctrl_c_stops_the_running_cell_with_sigterm_and_records_the_attempt(tmp_path, monkeypatch):
    spec = load_spec(tiny_grid(tmp_path))
    cells = expand(spec)
    real_wait, seen = subprocess.Popen.wait, []

    def wait(self, timeout=None):
        if not seen:  # the first wait of the runner: as if Ctrl-C arrived while the cell trains
            seen.append(self)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        run_local(spec, cells)
    (proc,) = seen
    assert proc.returncode is not None  # the runner waited for it to end
    # stopped by our SIGTERM: killed by it during start-up, or the trainer's clean stop (exit 0) after it
    assert proc.returncode in (-signal.SIGTERM, 0)
    (attempt,) = jsonl(cells[0].dir / "attempts.jsonl")
    assert attempt["returncode"] == proc.returncode
    assert not (cells[1].dir / "attempts.jsonl").exists()  # the sweep stopped: no next cell


def test_a_cell_locked_by_another_sweep_is_left_alone(tmp_path):
    spec = load_spec(tiny_grid(tmp_path))
    cell = expand(spec)[0]
    cell.dir.mkdir(parents=True)
    with open(cell.dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_cell(spec, cell).result == "busy"
    assert not (cell.dir / "attempts.jsonl").exists() and not (cell.dir / "train.log").exists()
