"""Helpers of the sweep tests: write a spec, make a cell directory look like a (partly) finished run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.trainer.conftest import FAST, TINY


def write_spec(tmp: Path, **fields) -> Path:
    """A spec YAML in `tmp` (base: the tiny example, out: tmp/out unless given) with `fields`."""
    raw = {"base": str(TINY), "out": str(tmp / "out"), **fields}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tiny_grid(tmp: Path, **fields) -> Path:
    """The 2 x 2 grid of the tests: modes codistill / grpo_small x seeds 1, 2 of 2-step tiny runs."""
    return write_spec(tmp, name="grid", overrides=[*FAST, "checkpoint.every=1", "run.eval_sampled=true"],
                      axes={"mode": {"codistill": ["algorithm.mode=codistill"],
                                     "grpo_small": ["algorithm.mode=grpo", "algorithm.grpo_model=small"]},
                            "seed": [1, 2]},
                      metrics={"keys": ["eval/arith/small_accuracy", "eval/arith/small_sampled_accuracy",
                                        "small/response_length"], "at": ["first", "last", "change"]},
                      compare={"axis": "mode", "baseline": "grpo_small", "pair_by": "seed"}, **fields)


def fake_run(run_dir: Path, rows: list[dict], *, steps: int, final: bool = True, wall_s: list[float] = ()) -> None:
    """Write what a run leaves: metrics.jsonl of `rows`, the final checkpoint marker (if `final`), summary.md,
    and local attempts of `wall_s` seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final:
        marker = run_dir / "checkpoints" / f"step_{steps:06d}" / "COMPLETE"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
        (run_dir / "summary.md").write_text("# done\n")
    if wall_s:
        (run_dir / "attempts.jsonl").write_text("".join(json.dumps({"wall_s": w, "returncode": 0}) + "\n"
                                                        for w in wall_s))
