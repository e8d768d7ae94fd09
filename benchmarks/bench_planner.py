"""Planner validation against measured CPU runs of the tiny example (2 gloo ranks).

    python benchmarks/bench_planner.py [--out benchmarks/results/planner.md] [--steps 6]

Part 1, parameters: the tiny example is trained for one step with the large model at TP x PP =
1x1, 2x1 and 1x2; every rank's checkpoint is opened and its parameters counted, next to the
planner's `stage_parameters` for that rank (exact match expected).
Part 2, time by phase: the 1x1 run's per-phase times (`time/*` in metrics.jsonl, mean of the steps
after the first) next to the planner's estimate for the same shapes, with this CPU's measured
single-thread matmul FLOP/s as "peak" and its measured copy bandwidth as "HBM" (each rank runs one
thread). "implied efficiency" = estimate at 100% / measured: the planner's MFU / bandwidth factors
would have to be this for the phase to be predicted exactly. The shares compare where the step's
time goes, measured vs estimated with one efficiency calibrated on update_large.
Part 3, activations: bytes that autograd keeps for backward in one transformers Qwen2 decoder layer
(bf16, SDPA attention, counted with saved-tensor hooks, parameters excluded) per token, next to
the planner's (8h + 4q + 4kv + 6F) for the same shapes. The planner counts what Megatron-Core with
fused kernels keeps (fused RMSNorm: bf16 input; fused SwiGLU: gate+up and the down-projection
input); the eager HF layer also keeps fp32 norm inputs (+2h each), the normalised bf16 tensor
before the weight (+2h each), the SiLU output (+2F), RoPE tables and the softmax log-sum-exp, which
accounts for the whole difference (checked by hand for the first row: 7,808 + 3,736 = 11,544).
All numbers come from one run and are printed as markdown (and written to --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from megatron_codistill.config import load_config, model_arch
from megatron_codistill.planner.memory import stage_parameters
from megatron_codistill.planner.timing import Efficiency, decode_time, matmul_parameters, train_time

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "tiny_cpu" / "config.yaml"
PHASES = ("generate", "score", "update_small", "update_large", "sync")


def train(run_dir: Path, tp: int, pp: int, steps: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "megatron_codistill.cli", "train", str(CONFIG), f"run.dir={run_dir}", f"run.steps={steps}",
           "warm_start.small_steps=0", "warm_start.large_steps=0", "run.eval_every=0", "checkpoint.every=0",
           "logging.tensorboard=false", "logging.progress=false",
           f"large.tensor_parallel={tp}", f"large.pipeline_parallel={pp}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"training at TP={tp} PP={pp} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def counted(run_dir: Path) -> list[dict[str, int]]:
    """Parameters per rank and model in the newest checkpoint."""
    ckpt = max((run_dir / "checkpoints").glob("step_*"))
    ranks = []
    for path in sorted(ckpt.glob("rank_*.pt")):
        state = torch.load(path, weights_only=False, map_location="cpu")["policies"]
        ranks.append({name: sum(v.numel() for v in s["model"].values() if torch.is_tensor(v))
                      for name, s in state.items()})
    return ranks


def part_parameters(work: Path, cfg) -> tuple[list[str], Path]:
    large, small = model_arch(cfg.large, "large"), model_arch(cfg.small, "small")
    rows = ["| large TP x PP | rank | model | stage | counted | planner | match |",
            "|---|---|---|---|---|---|---|"]
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        run_dir = work / f"tp{tp}pp{pp}"
        train(run_dir, tp, pp, steps=1)
        for rank, counts in enumerate(counted(run_dir)):
            stage = rank // (2 // pp)  # Megatron's rank order: TP fastest, PP slowest
            for name, arch, (t, p, s) in (("large", large, (tp, pp, stage)), ("small", small, (1, 1, 0))):
                want = stage_parameters(arch, t, p, s)
                rows.append(f"| {tp} x {pp} | {rank} | {name} | {s} | {counts[name]:,} | {want:,} | "
                            f"{'yes' if want == counts[name] else 'NO'} |")
    return rows, work / "tp1pp1"


def measure_cpu() -> tuple[float, float]:
    """(single-thread fp32 matmul FLOP/s, copy bandwidth bytes/s) of this machine."""
    torch.set_num_threads(1)
    a, b = torch.randn(2048, 128), torch.randn(128, 512)
    for _ in range(3):
        a @ b
    t0, n = time.perf_counter(), 50
    for _ in range(n):
        a @ b
    flops = 2 * 2048 * 128 * 512 * n / (time.perf_counter() - t0)
    x = torch.empty(64 * 1024 * 1024 // 4)
    y = torch.empty_like(x)
    y.copy_(x)
    t0, n = time.perf_counter(), 10
    for _ in range(n):
        y.copy_(x)
    bw = 2 * x.numel() * 4 * n / (time.perf_counter() - t0)  # read + write
    return flops, bw


def prompt_tokens(cfg) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(cfg.small.tokenizer) / "tokenizer.json"))
    rows = [json.loads(line) for line in Path(cfg.data.train).read_text().splitlines()[:500]]
    return statistics.mean(len(tok.encode(r["prompt"]).ids) for r in rows)


def part_phases(run_dir: Path, cfg, steps: int) -> list[str]:
    train(run_dir, 1, 1, steps=steps)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    measured = {k: statistics.mean(m[f"time/{k}"] for m in metrics) for k in PHASES}
    other = statistics.mean(m["time/step"] for m in metrics) - sum(measured.values())
    large, small = model_arch(cfg.large, "large"), model_arch(cfg.small, "small")
    flops, bw = measure_cpu()
    prompt = prompt_tokens(cfg)
    response = statistics.mean(m["small/response_length"] for m in metrics)
    a = cfg.algorithm
    seqs, seq_len = a.prompts_per_step * a.group_size, prompt + response
    tokens = int(seqs * seq_len)
    common = dict(tokens=tokens, seq_len=int(seq_len), gpus=2, peak_flops=flops, mfu=1.0)
    kv_token = 2 * small.num_layers * small.num_key_value_heads * small.head_dim * 4  # fp32 cache
    gen, _ = decode_time(small, sequences=seqs // 2, prompts=a.prompts_per_step // 2, prompt_len=int(prompt),
                         response_len=int(round(response)), concurrency=seqs // 2, tp=1,
                         weight_bytes=4 * small.num_parameters(), kv_bytes_token=kv_token, hbm_bytes_s=bw,
                         peak_flops=flops, eff=Efficiency(decode_bw=1.0, decode_mfu=1.0))
    predicted = {
        "generate": gen,
        "score": train_time(large, backward=False, **common) + train_time(small, backward=False, **common),
        "update_small": train_time(small, backward=True, **common),
        "update_large": train_time(large, backward=True, **common),
        "sync": 4 * small.num_parameters() / bw,
    }
    scale = measured["update_large"] / predicted["update_large"]  # one efficiency, fitted on one phase
    total_m, total_p = sum(measured.values()), sum(v * scale for v in predicted.values())
    rows = [f"CPU: {flops / 1e9:.1f} GFLOP/s fp32 matmul (1 thread), {bw / 1e9:.1f} GB/s copy; "
            f"{seqs} rollouts of {prompt:.1f} prompt + {response:.1f} response tokens (measured means); "
            f"N_matmul large {matmul_parameters(large):,}, small {matmul_parameters(small):,}.", "",
            "| phase | measured s | planner s at 100% | implied efficiency | measured share | planner share "
            "(calibrated on update_large) | share error |", "|---|---|---|---|---|---|---|"]
    for k in PHASES:
        share_m, share_p = measured[k] / total_m, predicted[k] * scale / total_p
        rows.append(f"| {k} | {measured[k]:.4f} | {predicted[k]:.5f} | {predicted[k] / measured[k]:.3f} | "
                    f"{share_m:.3f} | {share_p:.3f} | {share_p - share_m:+.3f} |")
    ratio_m = measured["update_large"] / measured["score"]
    ratio_p = predicted["update_large"] / predicted["score"]
    rows += ["", f"update_large / score: measured {ratio_m:.2f}, planner {ratio_p:.2f} "
             f"(error {ratio_p / ratio_m - 1:+.0%}). update_large / update_small: measured "
             f"{measured['update_large'] / measured['update_small']:.2f}, planner "
             f"{predicted['update_large'] / predicted['update_small']:.2f}. Not modelled by the planner: "
             f"reward + exchange + other = {other:.4f} s per step."]
    return rows


def part_activations() -> list[str]:
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.planner.memory import activation_bytes_per_token_layer

    rows = ["| h | heads / kv | ffn | tokens | HF layer bytes/token | planner bytes/token | HF / planner |",
            "|---|---|---|---|---|---|---|"]
    for h, heads, kv, ffn, tokens in ((256, 4, 2, 704, 512), (512, 8, 2, 1408, 256), (896, 14, 2, 4864, 128)):
        cfg = Qwen2Config(hidden_size=h, num_attention_heads=heads, num_key_value_heads=kv,
                          intermediate_size=ffn, num_hidden_layers=1, vocab_size=128)
        cfg._attn_implementation = "sdpa"
        layer = Qwen2DecoderLayer(cfg, 0).to(torch.bfloat16)
        x = torch.randn(1, tokens, h, dtype=torch.bfloat16, requires_grad=True)
        pos = torch.arange(tokens)[None]
        emb = Qwen2RotaryEmbedding(cfg)(x, pos)
        params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        saved: dict[int, int] = {}

        def pack(t, saved=saved, params=params):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x, attention_mask=None, position_ids=pos, position_embeddings=emb)
        measured = sum(saved.values()) / tokens
        arch = ModelArch(family="qwen2", hidden_size=h, num_layers=1, num_attention_heads=heads,
                         num_key_value_heads=kv, ffn_hidden_size=ffn, vocab_size=128)
        want = activation_bytes_per_token_layer(arch, tp=1)
        rows.append(f"| {h} | {heads} / {kv} | {ffn} | {tokens} | {measured:,.0f} | {want:,.0f} | "
                    f"{measured / want:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/planner.md")
    parser.add_argument("--steps", type=int, default=6,
                        help="RL steps of the timed run (the first is dropped)")
    args = parser.parse_args()
    cfg = load_config(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        param_rows, _ = part_parameters(Path(tmp), cfg)
        phase_rows = part_phases(Path(tmp) / "timed", cfg, args.steps)
    act_rows = part_activations()
    text = "\n".join(["# Planner vs measured tiny CPU runs", "", "## Parameters per rank", "",
                      *param_rows, "", "## Time by phase (TP 1, PP 1, 2 ranks)", "", *phase_rows, "",
                      "## Activations kept for backward, one layer", "", *act_rows, ""])
    sys.stdout.write(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
