"""`codistill train CONFIG`: the loop. generate, reward, score, update, sync; evaluate, log, save."""

from __future__ import annotations

import math
import signal

import torch
import torch.distributed as dist

from megatron_codistill.config import load_config
from megatron_codistill.log import get_logger
from megatron_codistill.trainer import supervised
from megatron_codistill.trainer.build import Run, build_run
from megatron_codistill.trainer.checkpoint import rng_state, set_rng_state
from megatron_codistill.trainer.evaluate import evaluate
from megatron_codistill.trainer.metrics import MetricsLogger
from megatron_codistill.trainer.step import rl_step

log = get_logger(__name__)


class StopFlag:
    """Set by SIGTERM / SIGUSR1 (SLURM preemption); ranks agree on it once per step."""

    def __init__(self) -> None:
        self.local = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.local = True

    def agreed(self) -> bool:
        flag = torch.tensor(float(self.local))
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def train_main(config_path: str, overrides: list[str], *, resume: bool = False) -> int:
    stop = StopFlag()  # before anything slow: a signal during setup is honoured at the first boundary
    cfg = load_config(config_path, overrides)
    run = build_run(cfg, sft=cfg.algorithm.mode == "sft")
    train(run, resume=resume, stop=stop)
    return 0


def train(run: Run, *, resume: bool = False, stop: StopFlag | None = None) -> None:
    cfg, stop = run.cfg, stop or StopFlag()
    step = restore(run) if resume else None
    if step is None:
        step = 0
        if supervised.warm_start(run):
            save(run, 0)
    if stop.agreed():
        log.info("preempted at step %d: checkpoint saved, exiting", step)
        run.engine.shutdown()
        return
    logger = MetricsLogger(cfg.run.dir, rank=run.rank, total_steps=cfg.run.steps, start_step=step,
                           tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
                           wandb_run_name=cfg.logging.wandb_run_name, progress=cfg.logging.progress,
                           config=run.extra["config"])
    step_fn = supervised.sft_step if run.mode is None else rl_step
    try:
        while step < cfg.run.steps:
            step += 1
            metrics = step_fn(run, step)
            check_finite(metrics, step)
            if cfg.run.eval_every and (step % cfg.run.eval_every == 0 or step == cfg.run.steps):
                metrics.update(evaluate(run))
            logger.log(step, metrics)
            preempted = stop.agreed()
            every = cfg.checkpoint.every
            if preempted or step == cfg.run.steps or (every and step % every == 0):
                save(run, step)
            if preempted:
                log.info("preempted at step %d: checkpoint saved, exiting", step)
                break
    finally:
        logger.close()
        run.engine.shutdown()


def check_finite(metrics: dict[str, float], step: int) -> None:
    """Stop at the first non-finite loss or gradient norm, naming the step and the metric."""
    for key, value in metrics.items():
        if key.endswith(("/loss", "/grad_norm")) and not math.isfinite(value):
            raise FloatingPointError(f"step {step}: {key} = {value}; the last checkpoint is intact, "
                                     "resume from it with a lower learning rate")


def save(run: Run, step: int) -> None:
    rank_state = {"policies": {k: p.state_dict() for k, p in run.policies.items()}, "rng": rng_state(),
                  "engine_rng": run.engine.rng_state()}
    shared = {"prompts": run.prompts.state_dict(), "engine_version": run.engine_version,
              "mode": run.cfg.algorithm.mode}
    path = run.checkpoints.save(step, rank_state, shared)
    if run.cfg.checkpoint.export_hf:
        for name, policy in run.policies.items():
            policy.save_hf(path / "hf" / name, tokenizer_dir=run.tokenizer_dir)


def restore(run: Run) -> int | None:
    """Load the newest complete checkpoint; its step, or None when there is none (fresh start)."""
    path = run.checkpoints.latest()
    if path is None:
        log.info("--resume: no complete checkpoint in %s, starting fresh", run.checkpoints.root)
        return None
    state, shared = run.checkpoints.load(path)
    if shared.get("mode") != run.cfg.algorithm.mode:
        raise ValueError(f"{path} was saved by mode {shared.get('mode')!r}, this run is "
                         f"{run.cfg.algorithm.mode!r}; use a new run.dir")
    missing = set(run.policies) - set(state["policies"])
    if missing:
        raise ValueError(f"{path} has no state for model(s) {sorted(missing)}")
    for name, policy in run.policies.items():
        policy.load_state_dict(state["policies"][name])
    set_rng_state(state["rng"])
    run.prompts.load_state_dict(shared["prompts"])
    run.sync_weights(shared["engine_version"])
    run.engine.set_rng_state(state.get("engine_rng", {}))
    log.info("resumed from %s (step %d)", path, shared["step"])
    return shared["step"]
