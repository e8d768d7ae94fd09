"""Grid expansion, the commands of a cell and when a cell counts as finished."""

from __future__ import annotations

import sys

import pytest

from megatron_codistill.config import load_config
from megatron_codistill.sweep.cells import expand, local_command, record, select, status
from megatron_codistill.sweep.slurm import sbatch_command, task_args
from megatron_codistill.sweep.spec import load_spec
from tests.sweep.conftest import TINY, fake_run, write_spec


def _spec(tmp_path, **fields):
    return load_spec(write_spec(tmp_path, overrides=["run.steps=7", "algorithm.kd_alpha=0.25"], axes={
        "pair": {"tiny": ["small.arch.hidden_size=32"], "wide": ["small.arch.hidden_size=64",
                                                                 "small.arch.ffn_hidden_size=128"]},
        "lr": {"key": "small.optimizer.lr", "values": [0.0001, 0.003]},
        "seed": [3, 1, 2]}, **fields))


def test_cells_are_the_cartesian_product_in_axis_order(tmp_path):
    spec = _spec(tmp_path)
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 3
    assert [c.name for c in cells[:4]] == ["pair=tiny,lr=0.0001,seed=3", "pair=tiny,lr=0.0001,seed=1",
                                          "pair=tiny,lr=0.0001,seed=2", "pair=tiny,lr=0.003,seed=3"]
    wide = next(c for c in cells if c.name == "pair=wide,lr=0.003,seed=2")
    assert wide.values == {"pair": "wide", "lr": "0.003", "seed": "2"}
    assert wide.dir == tmp_path / "out" / "cells" / "pair=wide,lr=0.003,seed=2"
    assert wide.overrides == ["run.steps=7", "algorithm.kd_alpha=0.25", "small.arch.hidden_size=64",
                              "small.arch.ffn_hidden_size=128", "small.optimizer.lr=0.003", "run.seed=2",
                              f"run.dir={wide.dir}"]
    assert wide.steps == 7
    # the overrides reach the trainer's config as intended
    cfg = load_config(TINY, wide.overrides)
    assert (cfg.small.arch["hidden_size"], cfg.small.arch["ffn_hidden_size"], cfg.small.optimizer.lr,
            cfg.run.seed, cfg.run.dir, cfg.algorithm.kd_alpha) == (64, 128, 0.003, 2, str(wide.dir), 0.25)
    assert wide.group(("seed",)) == ("wide", "0.003")


def test_axis_overrides_win_over_common_ones(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides=["run.steps=7"], axes={"len": {"short": ["run.steps=2"]}}))
    (cell,) = expand(spec)
    assert cell.steps == 2 and load_config(TINY, cell.overrides).run.steps == 2


def test_commands_local_torchrun_and_array_task(tmp_path):
    spec = _spec(tmp_path, local={"nproc_per_node": 2},
                 slurm={"partition": "cpu", "time": "01:00:00", "cpus_per_task": 4, "max_parallel": 3,
                        "nproc_per_node": 2, "sbatch_args": ["--account=abc"], "launcher_args": ["--sglang-gpus", "2"]})
    cell = expand(spec)[0]
    train = ["train", str(TINY), *cell.overrides, "--resume"]
    assert local_command(spec, cell) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node=2", "-m", "megatron_codistill.cli", *train]
    spec.local_nproc = 1
    assert local_command(spec, cell) == [sys.executable, "-m", "megatron_codistill.cli", *train]
    assert task_args(spec, cell) == ["--python", sys.executable, "--nproc-per-node", "2", "--log-dir",
                                     str(cell.dir / "slurm-logs"), "--sglang-gpus", "2", str(TINY), *cell.overrides]
    cmd = sbatch_command(spec, 5, tmp_path / "t")
    assert cmd[:6] == ["sbatch", "--parsable", "--job-name=spec", "--array=0-4%3", "--nodes=1",
                       f"--output={tmp_path}/t/%x-%A_%a.out"]
    assert cmd[6:] == ["--partition=cpu", "--time=01:00:00", "--cpus-per-task=4", "--account=abc",
                       cmd[-3], "--args-file", f"{tmp_path}/t/task_%a.args"]
    assert cmd[-3].endswith("slurm/codistill.sbatch")


def test_select_by_pattern(tmp_path):
    cells = expand(_spec(tmp_path))
    assert [c.name for c in select(cells, ["pair=wide,lr=0.003,*"])] == [
        "pair=wide,lr=0.003,seed=3", "pair=wide,lr=0.003,seed=1", "pair=wide,lr=0.003,seed=2"]
    assert select(cells, None) == cells
    with pytest.raises(ValueError, match="no cell matches"):
        select(cells, ["mode=*"])


def test_status_new_partial_finished(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides=["run.steps=3"], axes={"seed": [1]}))
    (cell,) = expand(spec)
    assert status(cell) == "new"
    rows = [{"step": 0, "eval/a/small_accuracy": 0.1}, {"step": 1}, {"step": 2}]
    fake_run(cell.dir, rows, steps=3, final=False)
    assert status(cell) == "partial"
    fake_run(cell.dir, rows, steps=3)  # the final marker alone is not enough: the row of step 3 must exist
    assert status(cell) == "partial"
    fake_run(cell.dir, [*rows, {"step": 3, "eval/a/small_accuracy": 0.2}], steps=3)
    assert status(cell) == "finished"
    (cell.dir / "summary.md").unlink()  # an evaluating run writes its summary last
    assert status(cell) == "partial"
    fake_run(cell.dir, [{"step": 1}, {"step": 2}, {"step": 3}], steps=3)
    (cell.dir / "summary.md").unlink()  # without evaluation there is no summary to wait for
    assert status(cell) == "finished"
    spec.overrides = ["run.steps=5"]  # more steps: the cell continues
    (longer,) = expand(spec)
    assert status(longer) == "partial"


def test_a_started_cell_refuses_other_overrides(tmp_path):
    spec = load_spec(write_spec(tmp_path, overrides=["run.steps=3"], axes={"seed": [1]}))
    (cell,) = expand(spec)
    record(spec, cell, "local", ["x"])
    assert (cell.dir / "command.txt").read_text() == "x\n"
    record(spec, cell, "local", ["y"])  # not started yet: a new record is fine
    fake_run(cell.dir, [{"step": 1}], steps=3, final=False)
    spec.overrides = ["run.steps=3", "algorithm.kd_alpha=0.9"]
    (changed,) = expand(spec)
    with pytest.raises(ValueError, match=r"other overrides \(differing: \['algorithm.kd_alpha=0.9'\]\)"):
        record(spec, changed, "local", ["z"])
