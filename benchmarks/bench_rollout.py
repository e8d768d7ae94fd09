"""Rollout benchmark on CPU: embedded-engine decoding with and without a KV cache, and weight syncs.

    python benchmarks/bench_rollout.py [--out benchmarks/results/rollout.md] [--threads 1] [--quick]

Part 1: tokens/s of the embedded engine (greedy, no stop tokens, so every row makes exactly
max_new_tokens) with its KV cache vs recomputing the whole prefix each step.
Part 2: seconds and MB/s to push a ~100M-parameter Qwen2-style model (fp32) into an embedded engine:
  direct        (HF name, tensor) buckets copied into the engine's parameters
  disk          buckets written as a sharded safetensors checkpoint, then loaded by the engine
  export+direct the same weights in a TP=1 Megatron-Core model, exported in buckets then copied
All numbers come from one run and are printed as markdown tables (and written to --out).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.embedded import EmbeddedEngine
from megatron_codistill.rollout.weight_sync import DiskSync, rebucket, sync_weights


def _model(hidden: int, layers: int, vocab: int, ffn: int, heads: int, kv: int, seed: int = 0):
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def bench_decode(batch: int, prompt_len: int, new_tokens: list[int], repeats: int) -> list[str]:
    model = _model(hidden=256, layers=4, vocab=4096, ffn=704, heads=4, kv=2)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    prompts = torch.randint(0, 4096, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).tolist()
    rows = [
        f"Decoding: {params:.1f}M-parameter model, {batch} prompts x {prompt_len} tokens, greedy, "
        f"best of {repeats}",
        "",
        "| new tokens | KV cache tok/s | recompute tok/s | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for n in new_tokens:
        sp = SamplingParams(temperature=0.0, max_new_tokens=n)
        rates = {}
        for cache in (True, False):
            engine = EmbeddedEngine(model, pad_token_id=0, max_batch_size=batch, use_kv_cache=cache)
            engine.generate(prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=4))  # warm-up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                out = engine.generate(prompts, 1, sp)
                best = min(best, time.perf_counter() - start)
            made = sum(len(g[0].response_ids) for g in out)
            rates[cache] = made / best
        rows.append(f"| {n} | {rates[True]:.0f} | {rates[False]:.0f} | {rates[True] / rates[False]:.1f}x |")
    return rows


def _hf_items(model):
    return [(k, v) for k, v in model.state_dict().items() if "rotary_emb" not in k]


def _megatron_copy(source):
    """A TP=1 Megatron-Core model holding `source`'s weights (single gloo rank), or None."""
    try:
        from megatron_codistill.convert.model_io import load_hf_into_model
        from megatron_codistill.models.arch import ModelArch
        from megatron_codistill.models.provider import build_gpt_model
        from megatron_codistill.parallel.layout import build_layouts
    except ImportError as e:
        logging.warning("skipping export+direct: %s", e)
        return None
    _, small = build_layouts(tp=1, pp=1)
    arch = ModelArch.from_hf_config(source.config)
    with tempfile.TemporaryDirectory() as tmp:
        source.save_pretrained(tmp)
        model = build_gpt_model(arch, pg_collection=small.pg_collection, pre_process=True, post_process=True)
        load_hf_into_model(model, arch, tmp)
    return model, arch, small


def bench_sync(bucket_mb: list[int], repeats: int, quick: bool) -> list[str]:
    dims = (256, 4, 8192, 704, 4, 2) if quick else (768, 10, 24576, 2048, 12, 4)
    source = _model(*dims, seed=1)
    params = sum(p.numel() for p in source.parameters())
    engine = EmbeddedEngine.from_config(source.config)
    items = _hf_items(source)
    mega = _megatron_copy(source)
    rows = [
        f"Weight sync into an embedded engine: {params / 1e6:.0f}M parameters, fp32, "
        f"{sum(t.numel() * 4 for _, t in items) / 1e6:.0f} MB, best of {repeats}",
        "",
        "| strategy | bucket MB | buckets | seconds | MB/s |",
        "|---|---:|---:|---:|---:|",
    ]

    def run(name, bucket, make_buckets, strategy):
        best = None
        for r in range(repeats):
            stats = sync_weights(engine, make_buckets(), version=r + 1, strategy=strategy)
            best = stats if best is None or stats.seconds < best.seconds else best
        rows.append(f"| {name} | {bucket} | {best.buckets} | {best.seconds:.2f} | {best.mb_per_s:.0f} |")

    with tempfile.TemporaryDirectory() as tmp:
        for mb in bucket_mb:
            run("direct", mb, lambda mb=mb: rebucket(items, mb << 20), "direct")
        for mb in bucket_mb:
            run("disk", mb, lambda mb=mb: rebucket(items, mb << 20), DiskSync(tmp, hf_config=source.config))
    if mega is not None:
        from megatron_codistill.convert.export import export_hf_weights

        model, arch, layout = mega
        for mb in bucket_mb:
            run(
                "export+direct", mb,
                lambda mb=mb: export_hf_weights(
                    model, arch, tp_group=layout.tp_group, pp_group=layout.pp_group, bucket_bytes=mb << 20
                ),
                "direct",
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/rollout.md")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is steadiest on a shared machine: idle OpenMP workers spin)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.quick:
        decode = bench_decode(batch=4, prompt_len=16, new_tokens=[16, 32], repeats=1)
        sync = bench_sync([16], repeats=1, quick=True)
    else:
        decode = bench_decode(batch=16, prompt_len=64, new_tokens=[32, 128, 256], repeats=2)
        sync = bench_sync([64, 256], repeats=2, quick=False)
    head = f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU"
    text = "\n".join([head, "", *decode, "", *sync])
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
