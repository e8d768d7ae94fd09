"""The grid: cells (one `codistill train` run each), their commands and whether they are finished.

A cell is finished when its trainer wrote everything a complete run writes, in this order: the metrics
row of step `run.steps`, the final checkpoint `checkpoints/step_<run.steps>/COMPLETE`, and (when the run
evaluated) `summary.md`. Anything less is `partial` and continues from its newest checkpoint with
`--resume`. A started cell whose overrides the spec changed is refused (`check_record`): resuming it would
mix two configs (even a longer `run.steps` changes the learning-rate schedule of the steps already run).
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_codistill.config import ConfigError, load_config
from megatron_codistill.sweep.spec import SpecError, SweepSpec
from megatron_codistill.trainer.metrics import read_metrics

RECORD = "cell.json"


@dataclass
class Cell:
    name: str
    """"axis=value,axis=value" in axis order; also the directory name under <out>/cells/."""
    values: dict[str, str]
    """axis -> value name."""
    overrides: list[str]
    """Common overrides, then each axis's, then run.dir (later ones win)."""
    dir: Path
    steps: int
    """run.steps of the resolved config."""

    def group(self, drop: tuple[str, ...]) -> tuple[str, ...]:
        """The values of every axis but `drop`, in axis order (a cell group's key)."""
        return tuple(v for a, v in self.values.items() if a not in drop)


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid, each config loaded and checked (errors name the cell and the key)."""
    cells = []
    for combo in itertools.product(*[list(a.values.items()) for a in spec.axes]):
        values = {a.name: v for a, (v, _) in zip(spec.axes, combo)}
        name = ",".join(f"{a}={v}" for a, v in values.items())
        cell_dir = spec.out / "cells" / name
        if yaml.safe_load(str(cell_dir)) != str(cell_dir):
            raise SpecError(f"{spec.path}: out: {cell_dir} cannot be passed as run.dir={cell_dir} (YAML reads it "
                            "as something else); choose a plainer output directory")
        overrides = [*spec.overrides, *[o for _, ovs in combo for o in ovs], f"run.dir={cell_dir}"]
        try:
            cfg = load_config(spec.base, overrides)
        except ConfigError as e:
            raise SpecError(f"{spec.path}: cell {name}: {e}") from None
        if cfg.run.steps < 1:
            raise SpecError(f"{spec.path}: cell {name}: run.steps ({cfg.run.steps}) must be >= 1")
        cells.append(Cell(name, values, overrides, cell_dir, cfg.run.steps))
    return cells


def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    """The cells whose name matches one of the shell patterns (all of them for None); none is an error."""
    if not patterns:
        return cells
    from fnmatch import fnmatchcase

    chosen = [c for c in cells if any(fnmatchcase(c.name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"--cells {patterns}: no cell matches; cells: {[c.name for c in cells]}")
    return chosen


def train_argv(spec: SweepSpec, cell: Cell) -> list[str]:
    """`codistill train BASE OVERRIDES run.dir=CELL --resume`: the arguments after the program."""
    return ["train", str(spec.base), *cell.overrides, "--resume"]


def local_command(spec: SweepSpec, cell: Cell) -> list[str]:
    """The command line of a local cell: this interpreter, under torchrun for several processes."""
    if spec.local_nproc == 1:
        return [sys.executable, "-m", "megatron_codistill.cli", *train_argv(spec, cell)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec.local_nproc}",
            "-m", "megatron_codistill.cli", *train_argv(spec, cell)]


def rows(run_dir: Path) -> list[dict]:
    """The complete rows of `<run_dir>/metrics.jsonl` ([] when there is none)."""
    return read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []


def status(cell: Cell) -> str:
    """"finished", "partial" (started: metrics or checkpoints exist) or "new"."""
    d = cell.dir
    if (d / "checkpoints" / f"step_{cell.steps:06d}" / "COMPLETE").exists():
        got = rows(d)
        evaluated = any(k.startswith("eval/") for r in got for k in r)
        if any(r.get("step") == cell.steps for r in got) and (not evaluated or (d / "summary.md").exists()):
            return "finished"
    return "partial" if (d / "metrics.jsonl").exists() or (d / "checkpoints").exists() else "new"


def record(spec: SweepSpec, cell: Cell, launcher: str, command: list[str], **extra) -> None:
    """Write `<cell>/cell.json` (axes, overrides, the exact command) and `<cell>/command.txt`.

    A cell directory started with other overrides is refused: resuming it would mix two configs.
    """
    check_record(cell)
    cell.dir.mkdir(parents=True, exist_ok=True)
    data = {"name": cell.name, "values": cell.values, "base": str(spec.base), "overrides": cell.overrides,
            "launcher": launcher, "command": command, **extra}
    (cell.dir / RECORD).write_text(json.dumps(data, indent=1) + "\n")
    (cell.dir / "command.txt").write_text(shlex.join(command) + "\n")


def check_record(cell: Cell) -> None:
    """Refuse a started cell whose recorded overrides differ from the spec's (see `record`)."""
    path = cell.dir / RECORD
    if path.exists() and status(cell) != "new":
        old = json.loads(path.read_text()).get("overrides", [])
        if old != cell.overrides:
            changed = sorted(set(old) ^ set(cell.overrides))
            raise ValueError(f"{cell.dir} was started with other overrides (differing: {changed}); resuming it "
                             "would mix two configs: delete that cell directory or use another `out`")
