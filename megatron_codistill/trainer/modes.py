"""The modes of one trainer: CoDistill-GRPO and the baselines it is compared with (DESIGN §2).

A mode says which model generates, which models learn, whether the large model scores the small
model's rollouts (the KD reward) and how much the task reward counts. The step code reads these
flags; there is no per-mode fork of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_codistill.config import AlgorithmConfig


@dataclass(frozen=True)
class Mode:
    name: str
    generator: str
    """"small" or "large": whose weights the rollout engine serves."""
    train_small: bool
    train_large: bool
    teacher_scores: bool
    """The large model scores the small model's rollouts (d = l^L - l^S for the KD reward)."""
    task_weight: float
    """Weight of the task reward in the small model's reward (0 = on-policy distillation)."""

    @property
    def needs_small(self) -> bool:
        return self.generator == "small" or self.train_small

    @property
    def needs_large(self) -> bool:
        return self.generator == "large" or self.train_large or self.teacher_scores


MODES = {
    "codistill": Mode("codistill", "small", True, True, True, 1.0),
    "kd_grpo": Mode("kd_grpo", "small", True, False, True, 1.0),
    "opd": Mode("opd", "small", True, False, True, 0.0),
    "grpo_small": Mode("grpo_small", "small", True, False, False, 1.0),
    "grpo_large": Mode("grpo_large", "large", False, True, False, 1.0),
}


def resolve_mode(a: AlgorithmConfig) -> Mode:
    """The Mode of an algorithm config (`grpo` + `grpo_model` -> grpo_small / grpo_large)."""
    name = f"grpo_{a.grpo_model}" if a.mode == "grpo" else a.mode
    if name not in MODES:
        raise ValueError(f"algorithm.mode {a.mode!r} has no RL step; valid: {sorted(MODES)} (and sft)")
    return MODES[name]
