"""`codistill sweep SPEC.yaml`: run a grid of training runs (locally or as a SLURM job array) and aggregate.

    codistill sweep study.yaml                   # unfinished cells one after another here, then the summary
    codistill sweep study.yaml --slurm [--wait]  # unfinished cells as one job array
    codistill sweep study.yaml --aggregate-only  # summary.md / summary.json / plots of the finished cells
    codistill sweep study.yaml --dry-run         # the cells, their state and exact commands; runs nothing
"""

from __future__ import annotations

import argparse
import shlex
import sys

from megatron_codistill.sweep.cells import expand, local_command, select, status
from megatron_codistill.sweep.spec import load_spec


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Run a grid of `codistill train` runs (cartesian product of the spec's axes) locally or as "
                     "one SLURM job array, resumable, and aggregate them: mean and 95% interval over seeds per "
                     "cell group, paired differences by seed, plots.")
    p.add_argument("spec", help="sweep spec YAML (base config, overrides, axes, metrics, compare, slurm)")
    p.add_argument("--slurm", action="store_true", help="submit the unfinished cells as one SLURM job array")
    p.add_argument("--wait", action="store_true", help="with --slurm: wait for the array to end, then aggregate")
    p.add_argument("--aggregate-only", action="store_true", help="only write the summary of the finished cells")
    p.add_argument("--dry-run", action="store_true", help="print the cells, their state and commands; run nothing")
    p.add_argument("--cells", nargs="+", metavar="PATTERN",
                   help="run only the cells whose name matches a pattern, e.g. 'mode=codistill,*' (the summary "
                        "still covers every cell)")
    p.add_argument("--out", help="output directory (instead of the spec's `out`)")


def run_sweep_cli(args) -> int:
    from pathlib import Path

    if args.wait and not args.slurm:
        raise ValueError("--wait goes with --slurm (local runs always wait)")
    spec = load_spec(args.spec)
    if args.out:
        spec.out = Path(args.out).absolute()
    cells = expand(spec)
    chosen = select(cells, args.cells)
    todo = [c for c in chosen if status(c) != "finished"]
    if args.dry_run:
        return _dry_run(spec, chosen, todo, slurm=args.slurm)
    failed = 0
    if not args.aggregate_only and todo:
        if args.slurm:
            from megatron_codistill.sweep.slurm import submit

            sub = submit(spec, todo, wait=args.wait)
            if sub is not None:
                sys.stdout.write(f"submitted job array {sub.job_id} ({len(sub.tasks)} cells)\n")
            if not args.wait:
                sys.stdout.write(f"when it has ended: codistill sweep {args.spec} --aggregate-only\n")
                return 0
        else:
            from megatron_codistill.sweep.local import run_local

            try:
                failed = sum(o.result == "failed" for o in run_local(spec, chosen))  # shows the skipped ones too
            except KeyboardInterrupt:
                sys.stderr.write("interrupted: the running cell was stopped with SIGTERM and keeps its checkpoints; "
                                 "run the same command to resume\n")
                return 130
    from megatron_codistill.sweep.aggregate import aggregate

    text, summary = aggregate(spec, cells)
    sys.stdout.write(text)
    sys.stdout.write(f"\nsummary: {spec.out / 'summary.md'}, {spec.out / 'summary.json'}\n")
    unfinished = [c["name"] for c in summary["cells"] if c["status"] != "finished"]
    if unfinished:
        sys.stdout.write(f"unfinished cells ({len(unfinished)}): {', '.join(unfinished)}\n")
    if failed:
        sys.stderr.write(f"{failed} cell(s) failed; their logs are <cell>/train.log (rerun to resume them)\n")
    return 1 if failed else 0


def _dry_run(spec, chosen, todo, *, slurm: bool) -> int:
    out = sys.stdout
    out.write(f"sweep {spec.name}: {len(chosen)} cells under {spec.out / 'cells'}\n")
    for c in chosen:
        out.write(f"  {status(c):8s} {c.name}\n")
    if slurm:
        from megatron_codistill.sweep.slurm import submit

        sub = submit(spec, todo, dry_run=True)
        if sub is None:
            out.write("nothing to submit\n")
            return 0
        out.write(f"would submit: {shlex.join(sub.command)}\n")
        for i, cell in sub.tasks.items():
            out.write(f"  task {i} ({cell.name}): {shlex.join(sub.args[i])}\n")
    else:
        for c in todo:
            out.write(f"would run: {shlex.join(local_command(spec, c))}\n")
    return 0
