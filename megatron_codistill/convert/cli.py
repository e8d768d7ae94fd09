"""`codistill convert hf-to-mcore | mcore-to-hf`: argument parsing and the handler.

Imports of torch / Megatron happen inside the handler so that `codistill --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; examples: 5GB, 500MB, 2GiB, 1000000")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def add_convert_args(subparsers) -> argparse.ArgumentParser:
    """Add the `convert` command (with its hf-to-mcore and mcore-to-hf sub-commands)."""
    parser = subparsers.add_parser("convert", help="convert checkpoints between HF and Megatron-Core")
    sub = parser.add_subparsers(dest="convert_direction", required=True, metavar="DIRECTION")
    to_mcore = sub.add_parser(
        "hf-to-mcore", help="HF safetensors (Qwen2 / Llama) -> Megatron distributed checkpoint (any TP/PP)")
    to_mcore.add_argument("--hf", required=True, help="HF model directory (config.json + *.safetensors)")
    to_mcore.add_argument("--out", required=True, help="output directory (must not hold files)")
    to_mcore.add_argument("--tp", type=int, default=1,
                          help="tensor parallel size the model must fit (the checkpoint loads at any)")
    to_mcore.add_argument("--pp", type=int, default=1,
                          help="pipeline parallel size the model must fit (the checkpoint loads at any)")
    to_mcore.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                          help="weights dtype of the checkpoint (default: that of the HF tensors)")
    to_mcore.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    to_hf = sub.add_parser("mcore-to-hf", help="Megatron distributed checkpoint -> HF sharded safetensors")
    to_hf.add_argument("--mcore", required=True,
                       help="checkpoint written by hf-to-mcore or save_mcore_checkpoint (a checkpoint of "
                            "`codistill train` exports with `codistill export RUN_DIR`)")
    to_hf.add_argument("--out", required=True, help="output directory (must not hold files)")
    to_hf.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"),
                       help="largest safetensors shard (default 5GB)")
    to_hf.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    parser.set_defaults(func=run_convert_cli)
    return parser


def run_convert_cli(args: argparse.Namespace) -> int:
    """Run one conversion; 0 on success, 2 (with the reason on stderr) when the input is refused."""
    import torch

    from megatron_codistill.convert import CheckpointError, convert_hf_to_mcore, convert_mcore_to_hf

    start = time.perf_counter()
    try:
        if args.convert_direction == "hf-to-mcore":
            dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
            out = convert_hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=dtype,
                                      overwrite=args.overwrite)
        else:
            out = convert_mcore_to_hf(args.mcore, args.out, overwrite=args.overwrite,
                                      max_shard_bytes=args.max_shard_size)
    except (CheckpointError, ValueError) as err:
        sys.stderr.write(f"codistill convert {args.convert_direction}: error: {err}\n")
        mcore = getattr(args, "mcore", None)
        if mcore and os.path.isfile(os.path.join(mcore, "trainer_state.json")):
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(mcore)))
            step = os.path.basename(os.path.abspath(mcore)).removeprefix("step_").lstrip("0") or "0"
            sys.stderr.write(f"{mcore} is a checkpoint of `codistill train`: export it with "
                             f"`codistill export {run_dir} --step {step} --out DIR`\n")
        return 2
    sys.stdout.write(f"wrote {out} in {time.perf_counter() - start:.1f} s\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (tools/convert_checkpoint.py): `convert` arguments without the prefix."""
    parser = argparse.ArgumentParser(prog="convert_checkpoint",
                                     description="Convert checkpoints between HF and Megatron-Core.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_args(sub)
    return run_convert_cli(parser.parse_args(["convert", *(sys.argv[1:] if argv is None else argv)]))
