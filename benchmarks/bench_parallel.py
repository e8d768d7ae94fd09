"""Train-step and scoring throughput of a ~10M-parameter model on CPU: TP=1 on one rank vs TP=2.

    python benchmarks/bench_parallel.py [--steps 5] [--batch 8] [--seq 128] [--out FILE]

One Qwen2-style model (hidden 256, 8 layers, GQA 8:4, FFN 768, vocab 8192, untied: 10.5M
parameters) runs `train_step` (forward + backward + Megatron AdamW with clipping) and
`forward_logprobs` on a [batch, seq] token batch in three set-ups from one run: TP=1 on one rank
with 1 thread, TP=1 on one rank with 2 threads, TP=2 on two gloo ranks with 1 thread each. Times
are medians over --steps after one warm-up step; tokens/s counts batch * (seq - 1) predicted
tokens. Prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ARCH = dict(family="qwen2", hidden_size=256, num_layers=8, num_attention_heads=8, num_key_value_heads=4,
            ffn_hidden_size=768, vocab_size=8192, max_position_embeddings=512, tie_word_embeddings=False)


def _worker(rank: int, world: int, port: int, tp: int, threads: int, args, queue) -> None:
    warnings.filterwarnings("ignore")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.provider import build_gpt_model
    from megatron_codistill.parallel.layout import build_layouts
    from megatron_codistill.parallel.logprobs import forward_logprobs
    from megatron_codistill.parallel.optimizer import build_optimizer
    from megatron_codistill.parallel.train_step import train_step

    large, _ = build_layouts(tp=tp, pp=1)
    arch = ModelArch(**ARCH)
    torch.manual_seed(0)
    model = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True)
    ddp, opt, sched = build_optimizer(model, large, lr=1e-4, clip_grad=1.0, total_steps=args.steps + 1)
    tokens = torch.randint(0, arch.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))

    def loss_fn(logp, entropy, rows):
        return -logp.sum() / (tokens.shape[0] * (tokens.shape[1] - 1)), {}

    def timed(fn):
        torch.distributed.barrier()
        start = time.perf_counter()
        fn()
        torch.distributed.barrier()
        return time.perf_counter() - start

    step = lambda: train_step(ddp, opt, large, tokens, loss_fn, micro_batch_size=args.batch, scheduler=sched)
    score = lambda: forward_logprobs(ddp, large, tokens, micro_batch_size=args.batch)
    step(), score()  # warm-up
    train = [timed(step) for _ in range(args.steps)]
    fwd = [timed(score) for _ in range(args.steps)]
    if rank == 0:
        queue.put((arch.num_parameters(), statistics.median(train), statistics.median(fwd)))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(tp: int, threads: int, args) -> tuple[int, float, float]:
    """(parameters, train-step seconds, scoring seconds) of TP=`tp` on `tp` ranks x `threads`."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, tp, port, tp, threads, args, queue)) for r in range(tp)]
    for p in procs:
        p.start()
    result = queue.get(timeout=1800)
    for p in procs:
        p.join()
    return result


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "parallel.md"))
    args = parser.parse_args()

    setups = [("TP=1, 1 rank x 1 thread", 1, 1), ("TP=1, 1 rank x 2 threads", 1, 2),
              ("TP=2, 2 ranks x 1 thread", 2, 1)]
    rows, base = [], None
    tokens = args.batch * (args.seq - 1)
    for label, tp, threads in setups:
        params, train_s, fwd_s = measure(tp, threads, args)
        base = base or train_s
        rows.append(f"| {label} | {train_s * 1e3:.0f} | {tokens / train_s:.0f} | {base / train_s:.2f}x "
                    f"| {fwd_s * 1e3:.0f} | {tokens / fwd_s:.0f} |")
    import megatron.core

    lines = [
        f"# Megatron-Core on CPU: TP=1 vs TP=2, {params / 1e6:.1f}M parameters",
        "",
        f"`python benchmarks/bench_parallel.py --steps {args.steps} --batch {args.batch} --seq {args.seq}` "
        f"on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, megatron-core {megatron.core.__version__}, gloo. Batch {args.batch} x "
        f"{args.seq} tokens, one micro-batch; median of {args.steps} steps after a warm-up. Load average "
        f"at the end: {os.getloadavg()[0]:.1f} (other processes share these cores, so times are upper bounds).",
        "",
        "| set-up | train step ms | train tokens/s | train speed-up | scoring ms | scoring tokens/s |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
