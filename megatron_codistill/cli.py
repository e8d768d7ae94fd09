"""`codistill`: the command line. Only this module sees argparse namespaces.

Subcommands: train, config show, convert, export, eval, plan, sweep, plot. Each imports its component lazily so
that `codistill --help` is instant and a missing optional dependency only affects its subcommand.
"""

from __future__ import annotations

import argparse
import os
import sys


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train (CoDistill-GRPO and its baselines) from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (values parsed as YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in run.dir (fresh start if none)")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from megatron_codistill.trainer.train import train_main

    return train_main(args.config, args.overrides, resume=args.resume)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    show = csub.add_parser("show", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")
    show.add_argument("--world-size", type=int, default=None,
                      help="also run the layout checks for this many ranks")
    show.set_defaults(func=_run_config_show)


def _run_config_show(args) -> int:
    from megatron_codistill.config import load_config, to_yaml, validate

    cfg = load_config(args.config, args.overrides)
    if args.world_size is not None:
        validate(cfg, args.world_size)
    sys.stdout.write(to_yaml(cfg))
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a training checkpoint's models as Hugging Face directories")
    p.add_argument("run_dir", help="run directory of `codistill train` (holds config.yaml and checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="RL step of the checkpoint (default: the newest)")
    p.add_argument("--out", required=True,
                   help="output directory: the HF directory itself for one model, DIR/small and DIR/large for both")
    p.add_argument("--model", choices=("small", "large", "both"), default="both")
    p.add_argument("--overwrite", action="store_true", help="replace existing exports in --out")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from megatron_codistill.trainer.export import export_main

    for name, path in export_main(args.run_dir, args.out, step=args.step, model=args.model,
                                  overwrite=args.overwrite).items():
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="write PNG curves of a run's metrics.jsonl")
    p.add_argument("run_dir")
    p.add_argument("--keys", nargs="*", default=None, help="metric keys (default: the main ones)")
    p.set_defaults(func=_run_plot)


def _run_plot(args) -> int:
    from megatron_codistill.trainer.plots import plot_run

    for path in plot_run(args.run_dir, args.keys):
        sys.stdout.write(f"{path}\n")
    return 0


def _add_lazy(sub, name: str, help_text: str, module: str, add: str, run: str, *, owns_parser: bool) -> None:
    """A subcommand whose arguments and handler live in `module`.

    owns_parser: `add(sub)` creates the `name` parser itself (commands with sub-commands);
    otherwise we create it and `add(parser)` fills in its arguments.
    """
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        p = sub.add_parser(name, help=f"{help_text} (unavailable: {e})")
        p.set_defaults(func=lambda args, e=e: _unavailable(name, e))
        return
    if owns_parser:
        getattr(mod, add)(sub)
        p = sub.choices[name]
    else:
        p = sub.add_parser(name, help=help_text)
        getattr(mod, add)(p)
    if p.get_default("func") is None:
        p.set_defaults(func=getattr(mod, run))


def _unavailable(name: str, err: Exception) -> int:
    sys.stderr.write(f"codistill {name}: unavailable because an import failed: {err}\n")
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codistill",
        description="CoDistill-GRPO: co-train a large and a small language model (Megatron-Core).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_config(sub)
    _add_lazy(sub, "convert", "convert checkpoints between Hugging Face and Megatron-Core",
              "megatron_codistill.convert.cli", "add_convert_args", "run_convert_cli", owns_parser=True)
    _add_lazy(sub, "eval", "evaluate a checkpoint on benchmark presets (gsm8k, math500, aime24, ...) or any file",
              "megatron_codistill.eval.cli", "add_eval_args", "run_eval_cli", owns_parser=False)
    _add_lazy(sub, "plan", "plan memory and step time of a model pair on a GPU cluster",
              "megatron_codistill.planner.cli", "add_plan_args", "run_plan_cli", owns_parser=True)
    _add_lazy(sub, "sweep", "run a grid of training runs (locally or as a SLURM job array) and aggregate it",
              "megatron_codistill.sweep.cli", "add_sweep_args", "run_sweep_cli", owns_parser=False)
    _add_export(sub)
    _add_plot(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from megatron_codistill.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    except ValueError as e:  # user input (files, checkpoints, tokenizers): the message names it
        if os.environ.get("CODISTILL_TRACEBACK"):
            raise
        sys.stderr.write(f"error: {e}\n(set CODISTILL_TRACEBACK=1 for the traceback)\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
