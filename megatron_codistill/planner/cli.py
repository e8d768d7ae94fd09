"""`codistill plan`: memory per GPU and step time of a model pair on a GPU cluster.

    codistill plan 1.5B/7B --gpu h100 --gpus 16
    codistill plan --small ./qwen-1.5b --large ./qwen-7b --gpus 32 --rollout-gpus 8 --json
    codistill plan --config run.yaml --gpus 16          # models, batch and lengths from a run config
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_codistill.models.arch import ModelArch
from megatron_codistill.planner.hardware import GPUS, get_gpu
from megatron_codistill.planner.plan import PlanRequest, plan_layouts
from megatron_codistill.planner.presets import PAIRS, PRESETS, load_model, load_pair
from megatron_codistill.planner.report import to_json, to_markdown
from megatron_codistill.planner.timing import Efficiency


def add_plan_args(subparsers) -> argparse.ArgumentParser:
    """Create the `plan` sub-command on `subparsers` (an argparse sub-parsers action)."""
    p = subparsers.add_parser(
        "plan", help="plan memory and step time of a model pair on a GPU cluster",
        description="Rank the large model's TP x PP x DP layouts by estimated step time and explain "
                    f"the invalid ones. Preset pairs: {', '.join(PAIRS)}; presets: {', '.join(PRESETS)} "
                    "(Qwen2.5).")
    p.add_argument("pair", nargs="?", help="SMALL/LARGE presets, e.g. 1.5B/7B (or use --small/--large)")
    p.add_argument("--small", help="small model: preset name or HF config directory / config.json")
    p.add_argument("--large", help="large model: preset name or HF config directory / config.json")
    p.add_argument("--config", help="a codistill run YAML: takes both models, prompts_per_step, group_size, "
                   "max_prompt_length, max_new_tokens, micro-batches and the distributed optimizer from it "
                   "(options given explicitly still win)")
    p.add_argument("--gpu", default="h100", help=f"GPU type: {', '.join(GPUS)} (default h100)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the job, trainer + rollout (default 8)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--rollout-gpus", type=int, default=0,
                   help="GPUs that only serve rollouts (SGLang); 0 = engine colocated with training")
    p.add_argument("--rollout-tp", type=int, default=1, help="tensor parallel size of each rollout server")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (default 512)")
    p.add_argument("--response-len", type=int,
                   help="generated tokens per rollout (default 2048)")
    p.add_argument("--prompts", type=int, help="prompts per step (default 32)")
    p.add_argument("--group-size", "-G", type=int, help="rollouts per prompt (default 8)")
    p.add_argument("--micro-batch-large", type=int, help="sequences per large micro-batch (default 1)")
    p.add_argument("--micro-batch-small", type=int, help="sequences per small micro-batch (default 1)")
    p.add_argument("--precision", choices=("bf16", "fp8"), default="bf16",
                   help="matmul precision for peak FLOP/s")
    p.add_argument("--no-distributed-optimizer", action="store_true", help="replicate optimizer states")
    p.add_argument("--recompute", choices=("auto", "none", "selective", "full"),
                   help="activation recompute of both models (auto: full only when needed to fit; default "
                        "auto, or each model's setting with --config)")
    p.add_argument("--schedule", choices=("sequential", "overlap", "async"),
                   help="step schedule (scheduler.mode): which phases overlap; default overlap, or the "
                        "config's with --config")
    p.add_argument("--reserve-gib", type=float, default=5.0, help="per-GPU reserve (context, NCCL), GiB")
    p.add_argument("--mfu", type=float, default=Efficiency.mfu, help="training/scoring MFU (default 0.4)")
    p.add_argument("--decode-bw", type=float, default=Efficiency.decode_bw,
                   help="fraction of HBM bandwidth reached by decoding (default 0.6)")
    p.add_argument("--decode-mfu", type=float, default=Efficiency.decode_mfu, help="decode/prefill MFU (0.3)")
    p.add_argument("--sync-gbs", type=float, default=25.0, help="weight push bandwidth to rollout GPUs, GB/s")
    p.add_argument("--network-gbs", type=float, default=50.0, help="inter-node bandwidth per GPU, GB/s (50)")
    p.add_argument("--tp", type=int, help="evaluate only this tensor parallel size (with --pp)")
    p.add_argument("--pp", type=int, help="evaluate only this pipeline parallel size (with --tp)")
    p.add_argument("--top", type=int, default=10, help="valid layouts shown in the table (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.set_defaults(func=run_plan_cli)
    return p


_DEFAULTS = {"prompt_len": 512, "response_len": 2048, "prompts": 32, "group_size": 8, "micro_batch_large": 1,
             "micro_batch_small": 1}


def _from_config(path: str) -> tuple[tuple[str, ModelArch], tuple[str, ModelArch], dict, bool]:
    """Both models, the batch and length settings, the distributed-optimizer flag and each model's
    recompute (values["recompute"], values["small_recompute"]) of a run config."""
    from megatron_codistill.config import ConfigError, load_config, model_arch
    from megatron_codistill.planner.memory import Recompute

    try:
        cfg = load_config(path)
        small, large = model_arch(cfg.small, "small"), model_arch(cfg.large, "large")
    except ConfigError as e:
        raise ValueError(f"{path}: {e}") from None
    values = {
        "prompt_len": cfg.rollout.max_prompt_length, "response_len": cfg.rollout.sampling.max_new_tokens,
        "prompts": cfg.algorithm.prompts_per_step, "group_size": cfg.algorithm.group_size,
        "micro_batch_large": cfg.large.micro_batch_size, "micro_batch_small": cfg.small.micro_batch_size,
        **{key: Recompute(m.recompute, m.recompute_method, m.recompute_num_layers)
           for key, m in (("recompute", cfg.large), ("small_recompute", cfg.small))},
        "schedule": cfg.scheduler.mode,
    }
    small_name = cfg.small.hf_config or cfg.small.checkpoint or "small"
    large_name = cfg.large.hf_config or cfg.large.checkpoint or "large"
    return (small_name, small), (large_name, large), values, cfg.large.optimizer.use_distributed_optimizer


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    """The PlanRequest the parsed arguments describe (ValueError names a bad argument)."""
    if sum(bool(x) for x in (args.pair, args.small or args.large, args.config)) > 1:
        raise ValueError("give one of: a SMALL/LARGE pair, --small and --large, or --config")
    v, dist_opt = dict(_DEFAULTS), True
    if args.pair:
        (small_name, small), (large_name, large) = load_pair(args.pair)
    elif args.small and args.large:
        (small_name, small), (large_name, large) = load_model(args.small), load_model(args.large)
    elif args.config:
        (small_name, small), (large_name, large), v, dist_opt = _from_config(args.config)
    else:
        raise ValueError(f"name a model pair ({', '.join(PAIRS)}), both --small and --large, or --config")
    v.update({k: getattr(args, k) for k in _DEFAULTS if getattr(args, k) is not None})  # explicit options win
    recompute, small_recompute = v.pop("recompute", "auto"), v.pop("small_recompute", None)
    schedule = args.schedule or v.pop("schedule", "overlap")
    v.pop("schedule", None)
    if args.recompute is not None:  # the option wins over the config, for both models
        recompute, small_recompute = args.recompute, None
    for name in ("gpus", "gpus_per_node", "rollout_tp"):
        v[name] = getattr(args, name)
    for name, value in v.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} ({value}) must be >= 1")
    if args.rollout_gpus < 0:
        raise ValueError(f"--rollout-gpus ({args.rollout_gpus}) must be >= 0")
    return PlanRequest(
        small=small, large=large, small_name=small_name, large_name=large_name, gpu=get_gpu(args.gpu),
        num_gpus=v["gpus"], gpus_per_node=v["gpus_per_node"], rollout_gpus=args.rollout_gpus,
        rollout_tp=v["rollout_tp"], prompt_len=v["prompt_len"], response_len=v["response_len"],
        prompts_per_step=v["prompts"], group_size=v["group_size"], micro_batch_large=v["micro_batch_large"],
        micro_batch_small=v["micro_batch_small"], precision=args.precision,
        distributed_optimizer=dist_opt and not args.no_distributed_optimizer, recompute=recompute,
        small_recompute=small_recompute, schedule=schedule,
        reserve_gib=args.reserve_gib, sync_gbs=args.sync_gbs, network_gbs=args.network_gbs,
        efficiency=Efficiency(mfu=args.mfu, decode_bw=args.decode_bw, decode_mfu=args.decode_mfu),
    )


def run_plan_cli(args: argparse.Namespace) -> int:
    """Print the plan; 0 when some layout is valid, 1 when none is, 2 for bad arguments."""
    try:
        req = request_from_args(args)
    except ValueError as e:
        sys.stderr.write(f"codistill plan: {e}\n")
        return 2
    if (args.tp is None) != (args.pp is None):
        sys.stderr.write("codistill plan: give --tp and --pp together\n")
        return 2
    layouts = [(args.tp, args.pp)] if args.tp is not None else None
    plans = plan_layouts(req, layouts)
    if args.json:
        sys.stdout.write(json.dumps(to_json(req, plans), indent=1) + "\n")
    else:
        sys.stdout.write(to_markdown(req, plans, top=args.top))
    return 0 if any(p.valid for p in plans) else 1
