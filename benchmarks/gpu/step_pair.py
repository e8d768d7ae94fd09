"""One CoDistill step of a random ~1B large / ~0.25B small pair: seconds per phase and the large
update's model FLOPs utilisation (MFU), as a markdown table.

    python benchmarks/gpu/step_pair.py [--size 1b|tiny] [--prompts 8] [--group 8] [--prompt-len 64]
        [--response-len 448] [--gen-prompts 1] [--micro-batch 8] [--micro-batch-tokens 0] [--steps 2]
        [--peak-tflops X] [--out FILE]

The trainer's own pieces run (build_run, step.score, step.update, Run.sync_weights) on a synthetic batch
of `prompts x group` rollouts of random tokens with response lengths drawn in [response_len / 4,
response_len] (so scoring and updates see realistic padding); generation is timed separately with the
run's engine on `--gen-prompts` prompts (it samples until max_new_tokens: a random model hardly ever
emits the stop token of a 32k vocabulary). The last of `--steps` steps is reported (the first pays for
allocator warm-up and kernel selection). MFU = 3 x (2 N + attention) x tokens / (time x peak), with
N the large model's matmul parameters, tokens the real (unpadded) tokens of the batch and the peak of
the detected GPU (planner.hardware; `--peak-tflops` otherwise). `--size tiny` runs the same code in
seconds on a CPU (a smoke test; its MFU is against a nominal 1 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "examples" / "tiny_cpu" / "config.yaml"

SIZES = {  # llama-style, GQA 2:1, untied, 32k vocabulary
    "1b": {"large": dict(hidden_size=2048, num_layers=16, num_attention_heads=16, num_key_value_heads=8,
                         ffn_hidden_size=5632),
           "small": dict(hidden_size=1024, num_layers=16, num_attention_heads=16, num_key_value_heads=8,
                         ffn_hidden_size=2816)},
    "tiny": {"large": dict(hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           ffn_hidden_size=128),
             "small": dict(hidden_size=32, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           ffn_hidden_size=64)},
}
VOCAB = 32000


def _arch(fields: dict, max_len: int) -> str:
    arch = dict(family="llama", vocab_size=VOCAB, max_position_embeddings=max_len, tie_word_embeddings=False,
                **fields)
    return json.dumps(arch)


def build(args):
    from megatron_codistill.config import load_config
    from megatron_codistill.trainer.build import build_run

    sizes, max_len = SIZES[args.size], args.prompt_len + args.response_len
    cuda = torch.cuda.is_available()
    overrides = [
        f"run.dir={tempfile.mkdtemp(prefix='step_pair_')}", "run.steps=1", "run.eval_every=0",
        "logging.tensorboard=false", "logging.progress=false", "warm_start.small_steps=0",
        "warm_start.large_steps=0", "data.eval=[]", f"algorithm.prompts_per_step={args.prompts}",
        f"algorithm.group_size={args.group}", f"rollout.sampling.max_new_tokens={args.response_len}",
        f"rollout.max_prompt_length={args.prompt_len}", f"rollout.max_batch_size={args.prompts * args.group}",
    ]
    for name in ("small", "large"):
        overrides += [f"{name}.arch={_arch(sizes[name], max_len)}", f"{name}.dtype={'bf16' if cuda else 'fp32'}",
                      f"{name}.micro_batch_size={args.micro_batch}", f"{name}.optimizer.warmup_steps=0"]
        if args.micro_batch_tokens:
            overrides.append(f"{name}.micro_batch_tokens={args.micro_batch_tokens}")
    return build_run(load_config(TINY, overrides))


def synthetic_batch(args, seed: int):
    """prompts x group rollouts of random tokens; responses of [response_len / 4, response_len] tokens."""
    from megatron_codistill.rollout.base import Rollout, RolloutBatch

    rng = random.Random(seed)
    groups = []
    for _ in range(args.prompts):
        prompt = [rng.randrange(VOCAB) for _ in range(args.prompt_len)]
        group = []
        for _ in range(args.group):
            n = rng.randint(max(args.response_len // 4, 1), args.response_len)
            group.append(Rollout(prompt, [rng.randrange(VOCAB) for _ in range(n)], [0.0] * n, "length"))
        groups.append(group)
    batch = RolloutBatch.from_rollouts(groups, pad_id=0)
    task = torch.tensor([float(rng.random() < 0.5) for _ in range(batch.tokens.shape[0])])
    return batch, task


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_step(run, args, seed: int) -> tuple[dict[str, float], dict]:
    """Seconds per phase of one step on a synthetic batch (the behaviour policy = the small model)."""
    from megatron_codistill.trainer import step as step_mod

    batch, task = synthetic_batch(args, seed)
    times, metrics = {}, {}

    def timed(phase, fn):
        _sync()
        start = time.perf_counter()
        out = fn()
        _sync()
        times[phase] = time.perf_counter() - start
        return out

    prompts = [list(map(int, batch.tokens[i * args.group, : args.prompt_len])) for i in range(args.gen_prompts)]
    timed("generate", lambda: run.engine.generate(prompts, args.group, run.sampling))
    scores = timed("score", lambda: step_mod.score(run, batch))
    batch.behaviour_logprobs = scores[run.mode.generator] * batch.response_mask
    for name in ("small", "large"):
        metrics.update(timed(f"update_{name}", lambda n=name: step_mod.update(run, n, batch, task, scores)))
    metrics.update(timed("sync", lambda: run.sync_weights(seed)))
    metrics["tokens"] = float((batch.prompt_lengths + batch.response_lengths).sum())
    metrics["rows"] = float(batch.tokens.shape[0])
    return times, metrics


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def peak_flops(args) -> tuple[float, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops:g}"
    if torch.cuda.is_available():
        from megatron_codistill.planner.hardware import GPUS

        name = torch.cuda.get_device_name()
        for key, spec in GPUS.items():
            if key in name.lower():
                return spec.peak_flops("bf16"), f"{spec.name} bf16 datasheet"
        return float("nan"), f"unknown GPU {name!r}: pass --peak-tflops"
    return 1e12, "nominal 1 TFLOP/s (CPU smoke run)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=448)
    parser.add_argument("--gen-prompts", type=int, default=1, help="prompts (x group) in the timed generation")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--micro-batch-tokens", type=int, default=0, help="token budget (0: fixed micro-batches)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(min(os.cpu_count() or 1, 8) if torch.cuda.is_available() else 1)
    from megatron_codistill.planner.timing import attention_flops_per_token, matmul_parameters

    run = build(args)
    steps = [one_step(run, args, seed) for seed in range(1, args.steps + 1)]
    times, metrics = steps[-1]
    large = run.policies["large"].arch
    seq = metrics["tokens"] / metrics["rows"]
    flops = 3 * (2 * matmul_parameters(large) + attention_flops_per_token(large, int(seq))) * metrics["tokens"]
    peak, peak_src = peak_flops(args)
    mfu = flops / (times["update_large"] * peak)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    engine_device = getattr(run.engine, "device", "?")
    params = {k: _count(p.arch.num_parameters()) for k, p in run.policies.items()}
    lines = [
        f"# One CoDistill step, random {params['large']} large / {params['small']} small ({args.size})",
        "",
        f"`python benchmarks/gpu/step_pair.py --size {args.size} --prompts {args.prompts} --group {args.group} "
        f"--prompt-len {args.prompt_len} --response-len {args.response_len} --micro-batch {args.micro_batch}"
        f"{f' --micro-batch-tokens {args.micro_batch_tokens}' if args.micro_batch_tokens else ''}` on {device}, "
        f"torch {torch.__version__}, dtype {run.cfg.large.dtype}; step {args.steps} of {args.steps}. "
        f"{int(metrics['rows'])} rollouts, {int(metrics['tokens'])} real tokens; generation: {args.gen_prompts} "
        f"x {args.group} rollouts of {args.response_len} new tokens on the embedded engine ({engine_device}).",
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in times.items()],
        f"| step (sum) | {sum(times.values()):.3f} |",
        "",
        f"Large update: {flops / 1e12:.2f} TFLOP of model FLOPs (3 x (2N + attention) per token, N = "
        f"{matmul_parameters(large) / 1e9:.3f}B), MFU {100 * mfu:.1f}% of {peak / 1e12:.0f} TFLOP/s ({peak_src}). "
        f"Padding: large {metrics.get('large/pad_frac', float('nan')):.3f} (fixed micro-batches "
        f"{metrics.get('large/pad_frac_fixed', float('nan')):.3f}). Losses: small "
        f"{metrics['small/loss']:.4f}, large {metrics['large/loss']:.4f}; median step over all steps "
        f"{statistics.median(sum(t.values()) for t, _ in steps):.3f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    finite = all(v == v and abs(v) != float("inf") for v in (metrics["small/loss"], metrics["large/loss"]))
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
