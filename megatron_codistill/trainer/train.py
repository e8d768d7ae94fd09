"""`codistill train CONFIG`: the loop. warm start, evaluate at step 0; then per step generate, reward,
score, update, sync; evaluate, log, save; at the end a summary table and plots."""

from __future__ import annotations

import functools
import math
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_codistill.config import load_config, to_yaml
from megatron_codistill.log import get_logger
from megatron_codistill.trainer import retrain, supervised
from megatron_codistill.trainer.build import Run, build_run
from megatron_codistill.trainer.checkpoint import reseed, rng_state, set_rng_state, step_dir_name, warmup_dir_name
from megatron_codistill.trainer.evaluate import evaluate
from megatron_codistill.trainer.export import export_step, has_export
from megatron_codistill.trainer.metrics import MetricsLogger
from megatron_codistill.trainer.report import write_summary
from megatron_codistill.trainer.warm_start import plan, warm_start

log = get_logger(__name__)


class StopFlag:
    """Set by SIGTERM / SIGUSR1 (SLURM preemption); ranks agree on it between steps."""

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


@dataclass
class Start:
    """Where a run (re)starts: after RL step `step`, or inside the warm start with `warm` progress."""

    step: int = 0
    warm: dict[str, int] | None = None
    """{model: warm-start steps done}; None once the warm start is complete."""


def train_main(config_path: str, overrides: list[str], *, resume: bool = False) -> int:
    stop = StopFlag()  # before anything slow: a signal during setup is honoured at the first boundary
    cfg = load_config(config_path, overrides)
    run = build_run(cfg, sft=cfg.algorithm.mode == "sft")
    train(run, resume=resume, stop=stop)
    return 0


def train(run: Run, *, resume: bool = False, stop: StopFlag | None = None) -> None:
    cfg, stop = run.cfg, stop or StopFlag()
    start = begin(run, resume)
    logger = MetricsLogger(cfg.run.dir, rank=run.rank, total_steps=cfg.run.steps, start_step=start.step,
                           keep_through=None if start.warm is not None else start.step,
                           tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
                           wandb_run_name=cfg.logging.wandb_run_name, progress=cfg.logging.progress,
                           config=run.extra["config"])
    step_fn = run.scheduler.step if run.scheduler is not None else functools.partial(supervised.sft_step, run)
    try:
        if start.warm is not None and not step_zero(run, start.warm, stop, logger):
            log.info("preempted during the warm start: progress checkpointed, exiting")
            return
        step, preempted = start.step, False
        while step < cfg.run.steps and not preempted:
            step += 1
            metrics = step_fn(step)
            metrics.update(retrain.after_step(run, step))
            check_finite(metrics, step)
            if cfg.run.eval_every and (step % cfg.run.eval_every == 0 or step == cfg.run.steps):
                metrics.update(evaluate(run, step))
            logger.log(step, metrics)
            preempted = stop.agreed()
            every = cfg.checkpoint.every
            if preempted or step == cfg.run.steps or (every and step % every == 0):
                save(run, step)
        if preempted:
            log.info("preempted at step %d: checkpoint saved, exiting", step)
        elif run.rank == 0:
            write_summary(cfg.run.dir, plots=cfg.logging.plots)
    finally:
        logger.close()
        run.engine.shutdown()


def begin(run: Run, resume: bool) -> Start:
    """Restore the newest intact checkpoint (with --resume) or check the run directory is fresh."""
    if run.rank == 0:
        Path(run.cfg.run.dir).mkdir(parents=True, exist_ok=True)
        (Path(run.cfg.run.dir) / "config.yaml").write_text(to_yaml(run.cfg))
    if resume:
        start = restore(run)
        if start is not None:
            return start
    elif run.checkpoints.candidates():
        newest = run.checkpoints.candidates()[0]
        raise ValueError(f"{run.cfg.run.dir} already holds checkpoints (newest {newest.name}): pass --resume "
                         "to continue that run, or set run.dir to a new directory")
    return Start(step=0, warm={})


def step_zero(run: Run, progress: dict[str, int], stop: StopFlag, logger: MetricsLogger) -> bool:
    """Warm start (or its rest), then evaluation at step 0 and the step-0 checkpoint. False if stopped."""
    done = warm_start(run, progress, should_stop=stop.agreed,
                      checkpoint=lambda p: save(run, 0, warm=p))
    if not done:
        return False
    if plan(run):
        run.sync_weights(0)
    if run.cfg.run.eval_every:
        logger.log(0, evaluate(run, 0))
    if plan(run):
        save(run, 0)
    return True


def check_finite(metrics: dict[str, float], step: int) -> None:
    """Stop at the first non-finite loss or gradient norm, naming the step and the metric."""
    for key, value in metrics.items():
        if key.endswith(("/loss", "/grad_norm")) and not math.isfinite(value):
            raise FloatingPointError(f"step {step}: {key} = {value}; the last checkpoint is intact, "
                                     "resume from it with a lower learning rate")


def save(run: Run, step: int, *, warm: dict[str, int] | None = None) -> None:
    """Checkpoint after RL step `step` (or inside the warm start, with its progress); HF export after."""
    # the prompt cursor and engine RNG as the next step must see them (the scheduler's: a generation
    # may already be running), and any finished in-flight rollouts
    flow = run.scheduler.state_dict() if run.scheduler is not None else {
        "prompts": run.prompts.state_dict(), "engine_rng": run.engine.rng_state(), "in_flight": []}
    rank_state = {"rng": rng_state(), "flow": flow, "objectives": retrain.objective_state(run)}
    shared = {"step": step, "warm_start": warm, "prompts": flow["prompts"],
              "engine_version": run.engine_version, "mode": run.cfg.algorithm.mode}
    name = warmup_dir_name(sum(warm.values())) if warm is not None else step_dir_name(step)
    models = {k: p.state_dict() for k, p in run.policies.items()}  # weights, optimizers, schedules: any layout
    path = run.checkpoints.save(name, rank_state, shared, sharded=models)
    if warm is None and run.cfg.checkpoint.export_hf:
        export_step(run, path)


def restore(run: Run) -> Start | None:
    """Load the newest intact checkpoint; where to continue, or None when there is none (fresh start)."""
    loaded = run.checkpoints.load_latest()
    if loaded is None:
        log.info("--resume: no complete checkpoint in %s, starting fresh", run.checkpoints.root)
        return None
    state, shared = loaded.rank_state, loaded.shared
    if shared.get("mode") != run.cfg.algorithm.mode:
        raise ValueError(f"{loaded.path} was saved by mode {shared.get('mode')!r}, this run is "
                         f"{run.cfg.algorithm.mode!r}; use a new run.dir")
    loaded.restore(run.policies)  # resharded when the layout differs
    retrain.load_objective_state(run, state.get("objectives"), same_ranks=loaded.same_ranks)
    flow = state["flow"]
    if loaded.same_ranks:
        set_rng_state(state["rng"])
    else:  # per-rank streams do not carry to another world size; the data cursor (rank 0's) does
        if flow["in_flight"]:
            raise ValueError(f"{loaded.path} holds in-flight rollouts of each rank's prompts; resume it at "
                             f"world size {loaded.resharded_from['world_size']}")
        reseed(run.cfg.run.seed, shared["step"], run.rank)
        flow = {**flow, "engine_rng": {}}  # the engine keeps the generator it was built with
    if loaded.resharded_from is not None:
        log.info("resharded model weights and optimizer states %s%s", run.checkpoints.describe_reshard(loaded),
                 "" if loaded.same_ranks else "; generators re-seeded")
    run.sync_weights(shared["engine_version"])  # the rollout engine is rebuilt from the weights
    if run.scheduler is not None:
        run.scheduler.load_state_dict(flow)
    else:
        run.prompts.load_state_dict(flow["prompts"])
        run.engine.set_rng_state(flow["engine_rng"])
    warm = shared.get("warm_start")
    where = f"warm start {warm}" if warm is not None else f"step {shared['step']}"
    log.info("resumed from %s (%s)", loaded.path, where)
    if warm is None and run.cfg.checkpoint.export_hf and not has_export(run, loaded.path):
        export_step(run, loaded.path)  # the run stopped between the checkpoint and its export
    return Start(step=shared["step"], warm=warm)
