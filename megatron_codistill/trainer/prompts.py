"""Prompts of a run: the training set as tokenised problems, served per rank in shuffled epochs.

Loading, field presets, templates and the resumable cursor live in `megatron_codistill.data`;
this module binds them to the run's tokenizer and to this rank's share of each step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from megatron_codistill.config import Config, DataConfig, EvalSetConfig


@dataclass
class Problem:
    """One training or evaluation problem, tokenised."""

    prompt_ids: list[int]
    prompt: str
    reference: str
    """Reference answer the reward checks against."""
    solution: str | None = None
    """Gold solution text (warm start, reference-conditioned KD)."""
    response_ids: list[int] = field(default_factory=list)
    """A given response (sft from a file of solutions)."""


def _problems(path: str, preset: str, d: DataConfig, tokenizer, *, split: str = "train",
              limit: int | None = None, max_prompt_tokens: int | None = None) -> list[Problem]:
    from megatron_codistill import data

    examples = data.load_examples(path, preset=preset, split=split, prompt_field=d.prompt_field,
                                  answer_field=d.answer_field, limit=limit)
    try:
        prompts = data.build_prompts(examples, d.template, tokenizer, max_prompt_tokens=max_prompt_tokens)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return [Problem(p.ids, p.text, p.example.answer, p.example.solution) for p in prompts]


class PromptStream:
    """This rank's `prompts_per_step / world_size` problems per step; deterministic, resumable."""

    def __init__(self, cfg: Config, tokenizer, *, rank: int, world_size: int):
        from megatron_codistill import data

        self.cfg, self.tokenizer, self.rank, self.world_size = cfg, tokenizer, rank, world_size
        self.problems = _problems(cfg.data.train, cfg.data.preset, cfg.data, tokenizer, split=cfg.data.split,
                                  max_prompt_tokens=cfg.data.max_prompt_tokens)
        seed = cfg.run.seed if cfg.data.shuffle_seed is None else cfg.data.shuffle_seed
        self.sampler = data.EpochSampler(len(self.problems), seed=seed)
        self.per_rank = cfg.algorithm.prompts_per_step // world_size
        self._eval: dict[str, list[Problem]] = {}

    def next_batch(self) -> list[Problem]:
        """The next step's prompts of this rank (all ranks advance the shared cursor together)."""
        idx = self.sampler.take(self.per_rank * self.world_size)
        return [self.problems[i] for i in idx[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]]

    def sample(self, n: int, rng: random.Random) -> list[Problem]:
        """`n` problems drawn uniformly with `rng` (independent of the cursor)."""
        return [self.problems[rng.randrange(len(self.problems))] for _ in range(n)]

    def eval_problems(self, e: EvalSetConfig) -> list[Problem]:
        if e.name not in self._eval:
            self._eval[e.name] = _problems(e.path, e.preset, self.cfg.data, self.tokenizer, split="test",
                                           limit=e.limit)
        return self._eval[e.name]

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
