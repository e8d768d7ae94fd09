"""slurm/codistill.sbatch --args-file (what a sweep's array task runs), through the script's dry run.

The arguments of a sweep cell, written one per line, reach the trainer exactly (overrides with spaces
included); `%a` picks the file of SLURM_ARRAY_TASK_ID; a missing task id or file is refused.
"""

from __future__ import annotations

import sys

from megatron_codistill.sweep.cells import expand
from megatron_codistill.sweep.slurm import task_args
from megatron_codistill.sweep.spec import load_spec
from tests.launch.dry_run import sbatch_dry_run, torchrun_options
from tests.sweep.conftest import TINY, tiny_grid


def _write(tmp_path):
    spec = load_spec(tiny_grid(tmp_path, slurm={"nproc_per_node": 2}))
    cells = expand(spec)
    for i, c in enumerate(cells):
        (tmp_path / f"task_{i}.args").write_text("".join(a + "\n" for a in task_args(spec, c)))
    return spec, cells


def test_each_array_task_runs_its_own_cell(tmp_path):
    spec, cells = _write(tmp_path)
    for i in (0, 3):
        run = sbatch_dry_run(["--args-file", str(tmp_path / "task_%a.args")], nodes=1, gpus=0,
                             env={"SLURM_ARRAY_TASK_ID": str(i)})
        assert run.returncode == 0, run.stderr
        ((host, rank, argv),) = run.trainers
        assert argv[0] == sys.executable
        opts, train = torchrun_options(argv)
        assert opts["--nproc-per-node"] == "2"
        # codistill.sbatch appends run.dir (taken from the cell's own run.dir override) and --resume
        assert train == ["train", str(TINY), *cells[i].overrides, f"run.dir={cells[i].dir}", "--resume"]
        assert any(" " in o for o in train)  # data.eval=[{name: arith, ...}] stayed one argument


def test_task_id_and_file_are_required(tmp_path):
    _write(tmp_path)
    run = sbatch_dry_run(["--args-file", str(tmp_path / "task_%a.args")], nodes=1, gpus=0)
    assert run.returncode == 2 and "%a needs SLURM_ARRAY_TASK_ID" in run.stderr
    run = sbatch_dry_run(["--args-file", str(tmp_path / "task_%a.args")], nodes=1, gpus=0,
                         env={"SLURM_ARRAY_TASK_ID": "9"})
    assert run.returncode == 2 and f"{tmp_path}/task_9.args not found" in run.stderr
    run = sbatch_dry_run(["--args-file"], nodes=1, gpus=0)
    assert run.returncode == 2 and "--args-file needs a value" in run.stderr
