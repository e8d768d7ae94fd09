"""`codistill eval`: arguments and handler (hooked into `megatron_codistill.cli`).

    codistill eval --model PATH [--benchmark NAME[=FILE[:problem_field:answer_field]] ...]
                   [--benchmarks gsm8k,math500,minerva] [--data-dir DIR]
                   [--n K --temperature T] [--limit N] [--out DIR]

`--benchmark` is repeatable: a preset (gsm8k, math500, minerva, aime24, amc23, olympiadbench) read from
--data-dir, a preset read from FILE in its published layout (`aime24=/data/aime_2024.parquet`), or any
file under a name of your own (`mine=my.jsonl:question:final`); see `eval.benchmarks`.

PATH is a Hugging Face checkpoint directory, or a Megatron-Core checkpoint written by
`codistill convert` / the trainer, which is first converted to HF (`megatron_checkpoint_to_hf`).
This module imports nothing heavy at import time: the top-level CLI builds its parser from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARKER = "codistill_convert.json"
"""Completion marker of checkpoints written by `megatron_codistill.convert` (holds their format)."""


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF checkpoint directory, or a Megatron-Core checkpoint")
    p.add_argument("--benchmark", action="append", default=[], metavar="NAME[=FILE[:PROBLEM:ANSWER]]",
                   help="a preset name, NAME=FILE (a preset's layout when NAME is one, else problem/answer "
                        "columns) or NAME=FILE:problem_field:answer_field; repeatable")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated preset names (default when no --benchmark: gsm8k,math500,minerva)")
    p.add_argument("--data-dir", default="data",
                   help="holds the presets' files: gsm8k/test.jsonl, math500/test.jsonl, minerva_math/test.jsonl, "
                        "aime24/, amc23/, olympiadbench/ (default: ./data)")
    p.add_argument("--out", default=None, help="results directory (default: <model>/eval); rerun to resume")
    p.add_argument("--n", type=int, default=1,
                   help="sampled responses per problem for pass@k and maj@k (1: greedy only)")
    p.add_argument("--temperature", type=float, default=0.6, help="temperature of the n samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--template", default="boxed", help="prompt template: r1_zero, boxed, chat, plain")
    p.add_argument("--batch-size", type=int, default=16, help="problems per generate call")
    p.add_argument("--max-batch-size", type=int, default=64, help="rows the embedded engine decodes together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp32", help="fp32, bf16, fp16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--reward-workers", type=int, default=2, help="math-verify worker processes")
    p.add_argument("--reward-timeout", type=float, default=5.0, help="CPU seconds per answer")


def is_megatron_checkpoint(path: Path) -> bool:
    """A directory with the convert marker of a non-HF format (HF outputs of convert are plain HF)."""
    marker = path / MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("format") != "hf-safetensors"


def megatron_checkpoint_to_hf(path: Path, work_dir: Path) -> Path:
    """Hook: a Megatron-Core checkpoint -> an HF directory the embedded engine can load.

    Converts once into `work_dir/hf_model` (reused by later runs) with `megatron_codistill.convert`.
    """
    from megatron_codistill.convert.mcore_to_hf import convert_mcore_to_hf

    target = work_dir / "hf_model"
    if (target / MARKER).is_file():
        return target
    return Path(convert_mcore_to_hf(str(path), str(target)))


def stop_token_ids(tokenizer, model_dir: Path) -> list[int]:
    """EOS of the tokenizer and of the checkpoint's generation config (chat models end turns there)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
    return sorted(ids)


def run_eval_cli(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from megatron_codistill.eval.benchmarks import DEFAULT_BENCHMARKS, parse_benchmarks
    from megatron_codistill.eval.harness import EvalSettings, evaluate
    from megatron_codistill.rollout.embedded import EmbeddedEngine

    model = Path(args.model)
    if not model.is_dir():
        raise SystemExit(f"codistill eval: --model {args.model!r} is not a directory")
    names = [b for b in (args.benchmarks or "").split(",") if b.strip()]
    benchmarks = names + args.benchmark or list(DEFAULT_BENCHMARKS)
    out = Path(args.out) if args.out else model / "eval"
    hf_dir = megatron_checkpoint_to_hf(model, out) if is_megatron_checkpoint(model) else model
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(hf_dir))
    try:
        settings = EvalSettings(
            benchmarks=benchmarks, data_dir=args.data_dir, out_dir=str(out),
            model=str(model.resolve()), n=args.n, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, limit=args.limit, template=args.template,
            batch_size=args.batch_size, seed=args.seed, stop_token_ids=stop_token_ids(tokenizer, hf_dir),
            reward_workers=args.reward_workers, reward_timeout_s=args.reward_timeout,
        )
        for bench in parse_benchmarks(benchmarks):  # every file read and checked before the model loads
            bench.load(args.data_dir, limit=args.limit)
    except ValueError as e:
        sys.stderr.write(f"codistill eval: {e}\n")
        return 2
    engine = EmbeddedEngine.from_pretrained(
        hf_dir, dtype=args.dtype, device=args.device, max_batch_size=args.max_batch_size,
        prompt_overflow="truncate_left",
    )
    try:
        evaluate(engine, tokenizer, settings)
    except ValueError as e:
        sys.stderr.write(f"codistill eval: {e}\n")
        return 2
    finally:
        engine.shutdown()
    sys.stdout.write((out / "summary.md").read_text())
    return 0
