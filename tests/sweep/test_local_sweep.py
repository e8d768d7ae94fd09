"""`codistill sweep` on this machine: the 2 x 2 grid (modes codistill / grpo_small x seeds 1, 2) of 2-step
runs of the tiny example.

1. One cell is killed (injected: the process exits right after its step-1 checkpoint); the sweep reports it
   with its log and still runs the other three.
2. `codistill sweep SPEC` again: the three finished cells are skipped (their metrics and attempts unchanged),
   the killed one resumes from its step-1 checkpoint and ends with every step once.
3. Once more: nothing runs. The table is checked against the cells' metrics by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_codistill.cli import main
from megatron_codistill.faults import EXIT_CODE
from megatron_codistill.sweep.cells import expand, status
from megatron_codistill.sweep.local import run_local
from megatron_codistill.sweep.spec import load_spec
from tests.sweep.conftest import REPO, check_grid_summary, decimals, hand_ci, jsonl, md_table, tiny_grid

pytestmark = pytest.mark.slow
KILLED = "mode=codistill,seed=2"


def test_grid_runs_fails_one_cell_resumes_it_and_skips_finished_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec_path = tiny_grid(tmp_path)
    spec = load_spec(spec_path)
    cells = expand(spec)
    kill = {"CODISTILL_FAULT": "checkpoint.after_rename@2:exit"}  # checkpoints: step 0, then step 1
    outcomes = run_local(spec, cells, env_for=lambda c: kill if c.name == KILLED else {})
    by_name = {o.cell.name: o for o in outcomes}
    assert [o.cell.name for o in outcomes] == [c.name for c in cells]
    failed = by_name.pop(KILLED)
    assert (failed.result, failed.returncode, failed.log) == ("failed", EXIT_CODE, cells[1].dir / "train.log")
    assert all(o.result == "finished" for o in by_name.values()), outcomes
    killed = cells[1].dir
    assert [r["step"] for r in jsonl(killed / "metrics.jsonl")] == [0, 1]
    assert status(cells[1]) == "partial"
    # the exact command is recorded
    rec = json.loads((killed / "cell.json").read_text())
    assert rec["command"][:4] == [sys.executable, "-m", "megatron_codistill.cli", "train"]
    assert rec["command"][-2:] == [f"run.dir={killed}", "--resume"] and "run.seed=2" in rec["command"]

    before = {c.name: ((c.dir / "metrics.jsonl").read_bytes(), (c.dir / "attempts.jsonl").read_bytes())
              for c in cells if c.name != KILLED}
    again = subprocess.run([sys.executable, "-m", "megatron_codistill.cli", "sweep", str(spec_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("finished before, skipped") == 3 and f"{KILLED}: resuming" in again.stderr
    for c in cells:
        if c.name != KILLED:
            assert ((c.dir / "metrics.jsonl").read_bytes(), (c.dir / "attempts.jsonl").read_bytes()) == before[c.name]
    assert [r["step"] for r in jsonl(killed / "metrics.jsonl")] == [0, 1, 2]
    assert "step_000001" in (killed / "train.log").read_text().split("==== codistill sweep: attempt")[-1]
    assert [a["returncode"] for a in jsonl(killed / "attempts.jsonl")] == [EXIT_CODE, 0]
    assert all(status(c) == "finished" for c in cells)

    snapshot = {c.name: (c.dir / "metrics.jsonl").read_bytes() for c in cells}
    capsys.readouterr()
    assert main(["sweep", str(spec_path)]) == 0
    text = capsys.readouterr().out
    assert {c.name: (c.dir / "metrics.jsonl").read_bytes() for c in cells} == snapshot
    assert text.startswith("# Sweep grid: 4 of 4 cells finished")
    assert text.startswith((spec.out / "summary.md").read_text() + "\nsummary: ")
    check_grid_summary(spec.out, text)
    # wall time: the sum of each cell's attempts
    table = {(r["mode"], r["metric"]): r for r in md_table(text, "mode")}
    walls = {m: [sum(a["wall_s"] for a in jsonl(spec.out / "cells" / f"mode={m},seed={s}" / "attempts.jsonl"))
                 for s in (1, 2)] for m in ("codistill", "grpo_small")}
    for m, w in walls.items():
        d = decimals(*hand_ci(w))
        assert table[(m, "wall time per cell (s)")]["by seed"] == f"1: {w[0]:.{d}f}, 2: {w[1]:.{d}f}"
    assert sorted(p.name for p in (spec.out / "plots").iterdir()) == sorted(
        k.replace("/", "_") + ".png" for k in ["eval/arith/small_accuracy", "eval/arith/small_sampled_accuracy",
                                              "small/reward/mean", "time/step"])
