"""The sweep spec (YAML): what to run, what to aggregate, how to submit. Every error names its key.

    name: tiny_pairs                      # default: the spec file's stem
    base: ../examples/tiny_cpu/config.yaml
    out: runs/sweeps/tiny_pairs           # default: runs/sweeps/<name>
    overrides: [run.steps=60, run.eval_every=10, run.eval_sampled=true]
    axes:                                 # cells = the cartesian product, in this order
      pair:                               # named values, each a list of overrides
        tiny: [small.arch.hidden_size=32]
        wide: [small.arch.hidden_size=64, small.arch.ffn_hidden_size=128]
      mode:
        codistill: [algorithm.mode=codistill]
        grpo_small: [algorithm.mode=grpo, algorithm.grpo_model=small]
      lr: {key: small.optimizer.lr, values: [1.0e-4, 3.0e-4]}   # one key, values named by themselves
      seed: [1, 2, 3]                     # a list of integers: sets run.seed
    metrics:
      keys: [eval/arith/small_accuracy]   # default: every eval/<set>/<model>_accuracy and _sampled_accuracy
      at: [first, last, change]           # also: a step number, mean_last_N
    compare: {axis: mode, baseline: grpo_small, pair_by: seed}
    local: {nproc_per_node: 1}
    slurm: {partition: cpu, time: "02:00:00", nodes: 1, nproc_per_node: 1, cpus_per_task: 4,
            max_parallel: 8, sbatch_args: [], launcher_args: []}

Paths starting with ./ or ../ are relative to the spec file, others to the working directory (the
trainer's rule for config paths). `run.dir` belongs to the sweep (one directory per cell); later overrides
win over earlier ones (common, then each axis in order), and no two axes may set the same key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_codistill.config import ConfigError

NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
AT = re.compile(r"^(first|last|change|mean_last_(?P<n>[1-9][0-9]*))$")
TOP_KEYS = ("name", "base", "out", "overrides", "axes", "metrics", "compare", "local", "slurm")


class SpecError(ConfigError):
    """A problem in the sweep spec; the message names the file and the key."""


@dataclass
class Axis:
    name: str
    values: dict[str, list[str]]
    """value name -> its overrides, in the spec's order."""

    def keys(self) -> set[str]:
        """The config keys this axis sets (over all its values)."""
        return {o.split("=", 1)[0].strip() for ovs in self.values.values() for o in ovs}


@dataclass
class Compare:
    axis: str
    """The axis whose values are compared (e.g. mode)."""
    baseline: str
    """The value of `axis` every other value is compared with."""
    pair_by: str
    """The axis that pairs the comparison (the seed): differences are taken within each of its values."""


@dataclass
class SlurmSpec:
    """sbatch options of the job array and launcher options of slurm/codistill.sbatch."""

    partition: str | None = None
    time: str | None = None
    """Time limit per array task (sbatch --time)."""
    nodes: int = 1
    nproc_per_node: int = 1
    """Trainer processes per node (codistill.sbatch --nproc-per-node)."""
    cpus_per_task: int | None = None
    max_parallel: int | None = None
    """Array tasks running at once (sbatch --array=...%N); None = no limit."""
    sbatch_args: list[str] = field(default_factory=list)
    """More sbatch options, e.g. [--gpus-per-node=8, --account=abc]."""
    launcher_args: list[str] = field(default_factory=list)
    """More codistill.sbatch options, e.g. [--sglang-gpus, "2"]."""
    python: str | None = None
    """Interpreter of the trainer on the nodes; default: the one running `codistill sweep`."""
    script: str | None = None
    """The batch script; default: slurm/codistill.sbatch of this source tree."""


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: Path
    out: Path
    overrides: list[str]
    axes: list[Axis]
    metrics: list[str] | None
    """Metric keys to aggregate; None = the held-out accuracies present in the cells."""
    at: list[str | int]
    """Where in each cell's curve: "first", "last", "change" (last - first), "mean_last_N", a step."""
    compare: Compare | None
    local_nproc: int
    slurm: SlurmSpec

    def axis(self, name: str) -> Axis:
        return next(a for a in self.axes if a.name == name)

    @property
    def seed_axis(self) -> str | None:
        """The axis of repetitions (seeds) that groups average over: compare.pair_by, else an axis `seed`."""
        if self.compare is not None:
            return self.compare.pair_by
        return "seed" if any(a.name == "seed" for a in self.axes) else None


def _fail(path: Path, key: str, msg: str) -> None:
    raise SpecError(f"{path}: {key}: {msg}")


def _path(value: Any, spec_dir: Path, path: Path, key: str) -> Path:
    if not isinstance(value, str) or not value:
        _fail(path, key, f"expected a path, got {value!r}")
    p = Path(value)
    return (spec_dir / p).resolve() if value.startswith(("./", "../")) else p.absolute()


def _overrides(value: Any, path: Path, key: str) -> list[str]:
    if not isinstance(value, list):
        _fail(path, key, f"expected a list of section.key=value strings, got {value!r}")
    for i, o in enumerate(value):
        if not isinstance(o, str) or "=" not in o or not o.split("=", 1)[0].strip():
            _fail(path, f"{key}[{i}]", f"expected section.key=value, got {o!r}")
        if "\n" in o:
            _fail(path, f"{key}[{i}]", "an override may not contain a line break (array tasks read one per line)")
        if o.split("=", 1)[0].strip() == "run.dir":
            _fail(path, f"{key}[{i}]", "run.dir is set by the sweep (one directory per cell under `out`)")
    return list(value)


def _axis(name: Any, raw: Any, path: Path) -> Axis:
    key = f"axes.{name}"
    if not isinstance(name, str) or not NAME.match(name):
        _fail(path, key, "axis names may use letters, digits and . _ + - only")
    if isinstance(raw, list):  # a list of integers: the seed axis
        if name != "seed" or not raw or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
            _fail(path, key, "a plain list is only for `seed: [1, 2, ...]` (integers, setting run.seed); "
                  "give other axes as {value_name: [overrides]} or {key: section.key, values: [...]}")
        raw = {"key": "run.seed", "values": raw}
    if not isinstance(raw, dict) or not raw:
        _fail(path, key, f"expected a mapping of named values (or {{key, values}}), got {raw!r}")
    if set(raw) == {"key", "values"}:
        if not isinstance(raw["key"], str) or not raw["key"] or "=" in raw["key"]:
            _fail(path, f"{key}.key", f"expected a config key like small.optimizer.lr, got {raw['key']!r}")
        if not isinstance(raw["values"], list) or not raw["values"]:
            _fail(path, f"{key}.values", f"expected a non-empty list, got {raw['values']!r}")
        named: dict[str, list[str]] = {}
        for i, v in enumerate(raw["values"]):
            if isinstance(v, (dict, list)) or v is None:
                _fail(path, f"{key}.values[{i}]", f"expected a scalar, got {v!r}; name structured values in a "
                      "mapping {name: [overrides]}")
            text = str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else str(v)
            if text in named:
                _fail(path, f"{key}.values[{i}]", f"{v!r} appears twice")
            named[text] = [f"{raw['key']}={text}"]
        raw = named
    axis = Axis(name, {})
    for vname, ovs in raw.items():
        vkey = f"{key}.{vname}"
        if not isinstance(vname, (str, int)) or isinstance(vname, bool) or not NAME.match(str(vname)):
            _fail(path, vkey, "value names may use letters, digits and . _ + - only (they name directories)")
        if isinstance(ovs, str):
            ovs = [ovs]
        axis.values[str(vname)] = _overrides(ovs, path, vkey)
    return axis


def _compare(raw: Any, axes: list[Axis], path: Path) -> Compare | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "axis" not in raw or "baseline" not in raw:
        _fail(path, "compare", f"expected {{axis: NAME, baseline: VALUE, pair_by: NAME}}, got {raw!r}")
    extra = set(raw) - {"axis", "baseline", "pair_by"}
    if extra:
        _fail(path, f"compare.{sorted(extra)[0]}", "unknown key; valid: axis, baseline, pair_by")
    names = [a.name for a in axes]
    c = Compare(str(raw["axis"]), str(raw["baseline"]), str(raw.get("pair_by", "seed")))
    if c.axis not in names:
        _fail(path, "compare.axis", f"{c.axis!r} is not an axis; axes: {names}")
    values = list(next(a for a in axes if a.name == c.axis).values)
    if c.baseline not in values:
        _fail(path, "compare.baseline", f"{c.baseline!r} is not a value of axis {c.axis}; values: {values}")
    if len(values) < 2:
        _fail(path, "compare.axis", f"axis {c.axis} has one value: nothing to compare")
    if c.pair_by not in names or c.pair_by == c.axis:
        _fail(path, "compare.pair_by", f"{c.pair_by!r} must be another axis (the seeds) pairing the comparison; "
              f"axes: {names}")
    return c


def _metrics(raw: Any, path: Path) -> tuple[list[str] | None, list[str | int]]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict) or set(raw) - {"keys", "at"}:
        _fail(path, "metrics", f"expected {{keys: [...], at: [...]}}, got {raw!r}")
    keys = raw.get("keys")
    if keys is not None and (not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys)):
        _fail(path, "metrics.keys", f"expected a non-empty list of metric names, got {keys!r}")
    at = raw.get("at", ["first", "last"])
    if not isinstance(at, list) or not at:
        _fail(path, "metrics.at", f"expected a non-empty list, got {at!r}")
    for i, a in enumerate(at):
        ok = (isinstance(a, int) and not isinstance(a, bool) and a >= 0) or (isinstance(a, str) and AT.match(a))
        if not ok:
            _fail(path, f"metrics.at[{i}]", f"{a!r} is not valid; use first, last, change (last - first), "
                  "mean_last_N (mean of the last N values) or a step number")
    return keys, list(at)


def _section(raw: Any, cls: type, path: Path, key: str) -> Any:
    raw = {} if raw is None else raw
    fields = cls.__dataclass_fields__
    if not isinstance(raw, dict):
        _fail(path, key, f"expected a mapping, got {raw!r}")
    for k, v in raw.items():
        if k not in fields:
            _fail(path, f"{key}.{k}", f"unknown key; valid: {', '.join(fields)}")
        default = fields[k].default
        if k in ("sbatch_args", "launcher_args"):
            if not isinstance(v, list) or not all(isinstance(s, str) and "\n" not in s for s in v):
                _fail(path, f"{key}.{k}", f"expected a list of strings, got {v!r}")
        elif k in ("nodes", "nproc_per_node", "cpus_per_task", "max_parallel"):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1) and not (v is None and default is None):
                _fail(path, f"{key}.{k}", f"expected an integer >= 1, got {v!r}")
        elif v is not None and not isinstance(v, str):
            _fail(path, f"{key}.{k}", f"expected a string, got {v!r}")
    return cls(**raw)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec (structure only; `cells.expand` checks every cell's config)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping (keys {', '.join(TOP_KEYS)})")
    for k in raw:
        if k not in TOP_KEYS:
            _fail(path, str(k), f"unknown key; valid: {', '.join(TOP_KEYS)}")
    spec_dir = path.parent.resolve()
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME.match(name):
        _fail(path, "name", f"{name!r}: use letters, digits and . _ + - only")
    if "base" not in raw:
        _fail(path, "base", "missing: the base config of every cell (a codistill train YAML)")
    base = _path(raw["base"], spec_dir, path, "base")
    if not base.is_file():
        _fail(path, "base", f"{base} does not exist")
    out = _path(raw.get("out", f"runs/sweeps/{name}"), spec_dir, path, "out")
    overrides = _overrides(raw.get("overrides", []), path, "overrides")
    if not isinstance(raw.get("axes"), dict) or not raw["axes"]:
        _fail(path, "axes", "expected a mapping of at least one axis")
    axes = [_axis(n, v, path) for n, v in raw["axes"].items()]
    for i, a in enumerate(axes):
        for b in axes[i + 1:]:
            shared = a.keys() & b.keys()
            if shared:
                _fail(path, f"axes.{b.name}", f"sets {sorted(shared)}, which axis {a.name} sets too; "
                      "give each key to one axis")
    keys, at = _metrics(raw.get("metrics"), path)
    compare = _compare(raw.get("compare"), axes, path)
    local = raw.get("local") or {}
    if not isinstance(local, dict) or set(local) - {"nproc_per_node"}:
        _fail(path, "local", f"expected {{nproc_per_node: N}}, got {local!r}")
    nproc = local.get("nproc_per_node", 1)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        _fail(path, "local.nproc_per_node", f"expected an integer >= 1, got {nproc!r}")
    slurm = _section(raw.get("slurm"), SlurmSpec, path, "slurm")
    return SweepSpec(path=path, name=name, base=base, out=out, overrides=overrides, axes=axes, metrics=keys,
                     at=at, compare=compare, local_nproc=nproc, slurm=slurm)
