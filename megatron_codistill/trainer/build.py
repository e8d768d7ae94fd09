"""Everything one run holds, built from a validated config: layouts, the policies, the rollout
engine, prompts, reward, checkpoints and metrics. Construction is collective (every rank)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from megatron_codistill.config import Config, to_dict, validate
from megatron_codistill.log import get_logger
from megatron_codistill.parallel.layout import ModelLayout, build_layouts, init_distributed
from megatron_codistill.rollout.base import RolloutEngine, SamplingParams
from megatron_codistill.trainer.checkpoint import CheckpointManager
from megatron_codistill.trainer.engines import build_engine, sync_engine
from megatron_codistill.trainer.modes import Mode, resolve_mode
from megatron_codistill.trainer.policy import Policy
from megatron_codistill.trainer.prompts import PromptStream
from megatron_codistill.trainer.task_reward import build_reward
from megatron_codistill.trainer.tokenizers import load_run_tokenizer

log = get_logger(__name__)


@dataclass
class Run:
    cfg: Config
    mode: Mode
    rank: int
    world_size: int
    layouts: dict[str, ModelLayout]
    policies: dict[str, Policy]
    engine: RolloutEngine
    sampling: SamplingParams
    tokenizer: object
    prompts: PromptStream
    reward: object
    checkpoints: CheckpointManager
    pad_id: int
    engine_version: int = 0
    scheduler: object = None
    """trainer.scheduler.Scheduler of RL modes (None in sft mode)."""
    conditioner: object = None
    """trainer.conditioning.Conditioner: the teacher's reference-conditioned KD scores (algorithm.kd_reference)."""
    task_model: object = None
    """trainer.task_reward.ModelTaskReward: the learned outcome reward (reward.kind = model)."""
    step_rewards: object = None
    """trainer.task_reward.StepRewards: per-step rewards (algorithm.supervision = process)."""
    retrainer: object = None
    """trainer.retrain.Retrainer: iterative RL's reward-model retraining (reward.retrain.every > 0)."""
    extra: dict = field(default_factory=dict)

    @property
    def generator(self) -> str:
        """The model the rollout engine serves (the teacher, large, in sft mode)."""
        return "large" if self.mode is None else self.mode.generator

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def sync_weights(self, step: int) -> dict[str, float]:
        """Push the generator's weights to the rollout engine (collective); sync metrics."""
        metrics = sync_engine(self.engine, self.policies[self.generator], self.cfg.rollout, version=step,
                              run_dir=self.cfg.run.dir)
        self.engine_version = step
        return metrics


def seed_everything(seed: int, rank: int) -> None:
    """Same model init on every rank (Megatron splits a full CPU init); per-rank sampling streams."""
    random.seed(seed + rank)
    torch.manual_seed(seed)


def job_layout(cfg: Config, world_size: int) -> dict:
    """What a checkpoint must match to be resumed: the world size and the large model's TP x PP."""
    return {"world_size": world_size, "large": {"tensor_parallel": cfg.large.tensor_parallel,
                                                "pipeline_parallel": cfg.large.pipeline_parallel}}


def build_run(cfg: Config, *, sft: bool = False) -> Run:
    """Every input is read and checked first (config, tokenizers, data and eval files), then the models."""
    rank, world = init_distributed()
    validate(cfg, world)
    mode = resolve_mode(cfg.algorithm) if not sft else None
    needs = {"small": True, "large": True} if sft else {"small": mode.needs_small, "large": mode.needs_large}
    tokenizer = load_run_tokenizer(cfg, [n for n in ("small", "large") if needs[n]])
    prompts = PromptStream(cfg, tokenizer, rank=rank, world_size=world)
    seed_everything(cfg.run.seed, rank)
    large_layout, small_layout = build_layouts(tp=cfg.large.tensor_parallel, pp=cfg.large.pipeline_parallel,
                                               seed=cfg.run.seed)
    layouts = {"large": large_layout, "small": small_layout}
    a = cfg.algorithm
    total = cfg.run.steps * a.epochs_per_step * a.mini_batches
    policies: dict[str, Policy] = {}
    for name, seed_offset in (("large", 1), ("small", 2)):
        if not needs[name]:
            continue
        trainable = True if sft else (mode.train_small if name == "small" else mode.train_large)
        policies[name] = Policy(name, getattr(cfg, name), layouts[name], total_steps=total,
                                seed=cfg.run.seed + seed_offset, with_reference=trainable and a.kl_beta > 0,
                                trainable=trainable, warm_start=getattr(cfg.warm_start, f"{name}_steps") > 0)
    generator = "large" if sft else mode.generator
    engine = build_engine(cfg, policies[generator], rank=rank, pad_id=tokenizer.pad_token_id)
    s = cfg.rollout.sampling
    stop = tuple(tokenizer.convert_tokens_to_ids(t) for t in s.stop)
    sampling = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_new_tokens=s.max_new_tokens,
                              stop_token_ids=(tokenizer.eos_token_id, *stop), seed=None)
    run = Run(cfg=cfg, mode=mode, rank=rank, world_size=world, layouts=layouts, policies=policies,
              engine=engine, sampling=sampling, tokenizer=tokenizer, prompts=prompts,
              reward=build_reward(cfg.reward), pad_id=tokenizer.pad_token_id,
              checkpoints=CheckpointManager(cfg.run.dir, rank=rank, world_size=world,
                                            keep_last=cfg.checkpoint.keep_last, layout=job_layout(cfg, world)))
    run.extra["config"] = to_dict(cfg)
    if mode is not None:
        attach_objectives(run)
    if mode is not None:
        from megatron_codistill.trainer.scheduler import Scheduler

        run.scheduler = Scheduler(run)
    return run


def attach_objectives(run: Run) -> None:
    """The reference-conditioned teacher and the learned reward models the config asks for (none by default)."""
    from megatron_codistill.trainer.conditioning import Conditioner
    from megatron_codistill.trainer.retrain import build_reward_models

    if run.mode.teacher_scores and run.cfg.algorithm.kd_reference != "none":
        run.conditioner = Conditioner(run)
    build_reward_models(run)
