"""Train-step and scoring throughput of one ~10M-parameter model on CPU in several layouts, and the
padding that token-budget micro-batches save on rollouts of mixed lengths.

    python benchmarks/bench_parallel.py [--steps 5] [--batch 8] [--seq 128] [--micro-batch 4] [--tiny] [--out FILE]

One Qwen2-style model (hidden 256, 8 layers, GQA 8:4, FFN 768, vocab 8192, untied: 10.5M
parameters; --tiny: hidden 64, 4 layers, for a smoke run) runs `train_step` (forward + backward +
Megatron AdamW with clipping) and `forward_logprobs` on a global [batch, seq] token batch, each
data-parallel replica on its share of the rows, in micro-batches of --micro-batch rows:
TP=1 on one rank (1 and 2 threads), TP=2 on two gloo ranks, and on four ranks TP=2 x PP=2 (1F1B
pipeline) and TP=2 x DP=2, one thread per rank. Times are medians over --steps after one warm-up
step, the slowest rank's; tokens/s counts batch x (seq - 1) predicted tokens.

Padding: on TP=1, rollouts whose lengths are drawn uniformly in [seq / 8, seq] (right padded to seq)
go through the same step with fixed micro-batches (--micro-batch rows at the batch's length) and with
`micro_batch_tokens` = micro-batch x seq (the same largest micro-batch); one step reports both padded
fractions (`pad_frac`, `pad_frac_fixed`), and the ratio of token positions computed is their ratio of
(1 - pad). Prints a markdown table and writes it to --out.
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
TINY_ARCH = dict(ARCH, hidden_size=64, num_layers=4, ffn_hidden_size=128, vocab_size=1024)
# label, TP, PP, ranks, threads per rank
LAYOUTS = [("TP=1, 1 rank x 1 thread", 1, 1, 1, 1), ("TP=1, 1 rank x 2 threads", 1, 1, 1, 2),
           ("TP=2, 2 ranks x 1 thread", 2, 1, 2, 1), ("TP=2 x PP=2, 4 ranks x 1 thread", 2, 2, 4, 1),
           ("TP=2 x DP=2, 4 ranks x 1 thread", 2, 1, 4, 1)]


def _batch(arch, args, mixed: bool):
    """tokens [batch, seq], lengths [batch] (all seq unless `mixed`), response mask [batch, seq - 1]."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, arch.vocab_size, (args.batch, args.seq), generator=gen)
    lengths = torch.full((args.batch,), args.seq)
    if mixed:
        lengths = torch.randint(max(args.seq // 8, 2), args.seq + 1, (args.batch,), generator=gen)
    mask = (torch.arange(args.seq - 1) < lengths[:, None] - 1).float()
    return tokens * (torch.arange(args.seq) < lengths[:, None]), lengths, mask


def _worker(rank: int, world: int, port: int, tp: int, pp: int, threads: int, mode: str, args, queue) -> None:
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

    large, _ = build_layouts(tp=tp, pp=pp)
    arch = ModelArch(**(TINY_ARCH if args.tiny else ARCH))
    torch.manual_seed(0)
    model = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=large.is_first_stage,
                            post_process=large.is_last_stage)
    ddp, opt, sched = build_optimizer(model, large, lr=1e-4, clip_grad=1.0, total_steps=2 * args.steps + 2)
    tokens, lengths, mask = _batch(arch, args, mixed=mode == "padding")
    denominator = mask.sum() / large.dp  # token mean over the global batch (see parallel.train_step)
    rows = slice(large.dp_rank * args.batch // large.dp, (large.dp_rank + 1) * args.batch // large.dp)
    tokens, lengths, mask = tokens[rows], lengths[rows], mask[rows]

    def loss_fn(logp, entropy, idx):
        return -(logp * mask[idx]).sum() / denominator, {}

    def timed(fn):
        torch.distributed.barrier()
        start = time.perf_counter()
        out = fn()
        elapsed = torch.tensor(time.perf_counter() - start)
        torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)  # the slowest rank
        return float(elapsed), out

    mb = args.micro_batch
    if mode == "layout":
        step = lambda: train_step(ddp, opt, large, tokens, loss_fn, micro_batch_size=mb, scheduler=sched)  # noqa: E731
        score = lambda: forward_logprobs(ddp, large, tokens, micro_batch_size=mb)  # noqa: E731
        step(), score()  # warm-up
        train = [timed(step)[0] for _ in range(args.steps)]
        fwd = [timed(score)[0] for _ in range(args.steps)]
        result = (arch.num_parameters(), statistics.median(train), statistics.median(fwd))
    else:
        kw = dict(micro_batch_size=mb, lengths=lengths, scheduler=sched)
        fixed = lambda: train_step(ddp, opt, large, tokens, loss_fn, **kw)  # noqa: E731
        packed = lambda: train_step(ddp, opt, large, tokens, loss_fn, micro_batch_tokens=mb * args.seq, **kw)  # noqa: E731
        fixed(), packed()  # warm-up
        t_fixed = [timed(fixed)[0] for _ in range(args.steps)]
        runs = [timed(packed) for _ in range(args.steps)]
        out = runs[-1][1]
        result = (statistics.median(t_fixed), statistics.median(t for t, _ in runs), out["pad_frac_fixed"],
                  out["pad_frac"], int(lengths.sum()))
    if rank == 0:
        queue.put(result)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(tp: int, pp: int, ranks: int, threads: int, mode: str, args):
    """What rank 0's `_worker` reports for this layout."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, ranks, port, tp, pp, threads, mode, args, queue))
             for r in range(ranks)]
    for p in procs:
        p.start()
    result = queue.get(timeout=3600)
    for p in procs:
        p.join()
    return result


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per micro-batch")
    parser.add_argument("--tiny", action="store_true", help="a smaller model, for a smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "parallel.md"))
    args = parser.parse_args()
    if args.batch % 2:
        parser.error("--batch must be even (DP=2 halves it)")

    rows, base, params = [], None, 0
    tokens = args.batch * (args.seq - 1)
    for label, tp, pp, ranks, threads in LAYOUTS:
        params, train_s, fwd_s = measure(tp, pp, ranks, threads, "layout", args)
        base = base or train_s
        rows.append(f"| {label} | {train_s * 1e3:.0f} | {tokens / train_s:.0f} | {base / train_s:.2f}x "
                    f"| {fwd_s * 1e3:.0f} | {tokens / fwd_s:.0f} |")
    t_fixed, t_packed, pad_fixed, pad_packed, real = measure(1, 1, 1, 1, "padding", args)
    import megatron.core

    lines = [
        f"# Megatron-Core on CPU: layouts of one {params / 1e6:.1f}M-parameter model, token-budget micro-batches",
        "",
        f"`python benchmarks/bench_parallel.py --steps {args.steps} --batch {args.batch} --seq {args.seq} "
        f"--micro-batch {args.micro_batch}{' --tiny' if args.tiny else ''}` on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, megatron-core "
        f"{megatron.core.__version__}, gloo. Global batch {args.batch} x {args.seq} tokens in micro-batches of "
        f"{args.micro_batch} rows (per data-parallel replica); median of {args.steps} steps after a warm-up, "
        f"slowest rank. Load average at the end: {os.getloadavg()[0]:.1f} (four ranks on fewer cores share "
        "them, and other processes may too: times are upper bounds).",
        "",
        "| set-up | train step ms | train tokens/s | train speed-up | scoring ms | scoring tokens/s |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## Token-budget micro-batches on rollouts of mixed lengths (TP=1, 1 rank x 1 thread)",
        "",
        f"{args.batch} rows of {args.seq // 8}..{args.seq} tokens ({real} real tokens), right padded to {args.seq}; "
        f"fixed: {args.micro_batch} rows per micro-batch; token budget: micro_batch_tokens = "
        f"{args.micro_batch * args.seq}. One step reports both padded fractions.",
        "",
        "| micro-batches | padded fraction | token positions computed | train step ms |",
        "|---|---|---|---|",
        f"| fixed rows | {pad_fixed:.3f} | {real / (1 - pad_fixed):.0f} | {t_fixed * 1e3:.0f} |",
        f"| token budget | {pad_packed:.3f} | {real / (1 - pad_packed):.0f} | {t_packed * 1e3:.0f} |",
        "",
        f"Positions computed, fixed / token budget: {(1 - pad_packed) / (1 - pad_fixed):.2f}x; step time ratio "
        f"{t_fixed / t_packed:.2f}x.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
