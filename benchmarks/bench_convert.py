"""Checkpoint conversion throughput and peak memory on CPU, both directions, ~500M parameters.

    python benchmarks/bench_convert.py [--work-dir DIR] [--dtype bf16|fp32] [--out FILE]

A random model with Qwen2.5-0.5B's shape (494M parameters, tied embeddings, GQA 14:2) is written as
sharded HF safetensors (2 GB shards at most, like a hub checkpoint), then converted HF -> Megatron
(`convert_hf_to_mcore`) and back (`convert_mcore_to_hf`), each direction in a fresh process so its
peak resident memory (ru_maxrss, the process and its writer subprocesses) is its own. "above
baseline" subtracts the resident size after imports, before the conversion starts; "x model" divides
that by the size of the weights. Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH = dict(family="qwen2", hidden_size=896, num_layers=24, num_attention_heads=14, num_key_value_heads=2,
            ffn_hidden_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
            tie_word_embeddings=True)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def write_random_hf(path: str, dtype_name: str) -> int:
    """Random weights (norms 1) in HF names, streamed into <= 2 GB shards; returns bytes of weights."""
    import torch

    from megatron_codistill.convert.mapping import expected_hf_tensors
    from megatron_codistill.convert.safetensors_io import ShardWriter, plan_shards
    from megatron_codistill.models.arch import ModelArch

    arch, dtype = ModelArch(**ARCH), getattr(torch, dtype_name)
    os.makedirs(path)
    shapes = expected_hf_tensors(arch)
    specs = {n: (s, dtype) for n, s in shapes.items()}
    sizes = [(n, math.prod(s) * dtype.itemsize) for n, s in shapes.items()]
    writer = ShardWriter(path, plan_shards(sizes, 2 * 10**9), specs)
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        t = torch.ones(shape) if name.endswith("norm.weight") else 0.02 * torch.randn(shape, generator=gen)
        writer.add(name, t.to(dtype))
    writer.finish()
    config = arch.to_hf_config()
    config.dtype = dtype_name
    config.save_pretrained(path)
    return sum(n for _, n in sizes)


def run_phase(direction: str, src: str, dst: str) -> dict:
    """One conversion in this process; its time and memory."""
    from megatron_codistill.convert import convert_hf_to_mcore, convert_mcore_to_hf

    baseline = _rss_mb()
    start = time.perf_counter()
    if direction == "hf-to-mcore":
        convert_hf_to_mcore(src, dst)
    else:
        convert_mcore_to_hf(src, dst)
    seconds = time.perf_counter() - start
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"direction": direction, "seconds": seconds, "baseline_mb": baseline, "peak_mb": peak / 1024}


def _in_child(direction: str, src: str, dst: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", direction, src, dst]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[dict], weight_bytes: int, dtype: str) -> str:
    mb = weight_bytes / 1e6
    lines = [f"Random Qwen2.5-0.5B-shaped model, {dtype}, {mb:.0f} MB of weights, CPU, one process per direction.",
             "", "| direction | seconds | MB/s | peak RSS MB | above baseline MB | x model |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        above = r["peak_mb"] - r["baseline_mb"]
        lines.append(f"| {r['direction']} | {r['seconds']:.1f} | {mb / r['seconds']:.0f} | {r['peak_mb']:.0f} | "
                     f"{above:.0f} | {above / mb:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir, removed)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    p.add_argument("--phase", nargs=3, metavar=("DIRECTION", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        sys.stdout.write(json.dumps(run_phase(*args.phase)) + "\n")
        return
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_convert-")
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    try:
        hf, mcore, back = (os.path.join(work, n) for n in ("hf", "mcore", "hf_back"))
        weight_bytes = write_random_hf(hf, dtype)
        rows = [_in_child("hf-to-mcore", hf, mcore), _in_child("mcore-to-hf", mcore, back)]
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = table(rows, weight_bytes, dtype)
    sys.stdout.write(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
