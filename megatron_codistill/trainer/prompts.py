"""Prompts of a run: the training set as tokenised problems, served per rank in shuffled epochs, and the
held-out sets of `data.eval`.

Loading, field presets, templates and the resumable cursor live in `megatron_codistill.data` (the loader
`codistill eval` uses too); this module binds them to the run's tokenizer and to this rank's share of
each step. Every file, the evaluation sets included, is read and checked when the stream is built, so a
bad row stops the run before the warm start, naming the file, line and field.
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
              limit: int | None = None, max_prompt_tokens: int | None = None,
              prompt_field: str | None = None, answer_field: str | None = None) -> list[Problem]:
    from megatron_codistill import data

    examples = data.load_examples(path, preset=preset, split=split, prompt_field=prompt_field,
                                  answer_field=answer_field, limit=limit)
    try:
        prompts = data.build_prompts(examples, d.template, tokenizer, max_prompt_tokens=max_prompt_tokens)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return [Problem(p.ids, p.text, p.example.answer, p.example.solution) for p in prompts]


def _eval_sets(cfg: Config, tokenizer) -> dict[str, list[Problem]]:
    """Every `data.eval` set, loaded and checked now; ValueError naming the set and where it went wrong."""
    names = [e.name for e in cfg.data.eval]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"data.eval: set name(s) {twice} used twice; each names its metrics (eval/<name>/...)")
    out = {}
    for i, e in enumerate(cfg.data.eval):
        if not e.path:
            raise ValueError(f"data.eval[{i}] ({e.name!r}): path is empty; give a jsonl/json/parquet file or a "
                             "hub name")
        try:
            out[e.name] = _problems(e.path, e.preset, cfg.data, tokenizer, split="test", limit=e.limit,
                                    prompt_field=e.prompt_field, answer_field=e.answer_field)
        except ValueError as err:
            raise ValueError(f"data.eval[{i}] ({e.name!r}): {err}") from None
    return out


class PromptStream:
    """This rank's `prompts_per_step / world_size` problems per step; deterministic, resumable."""

    def __init__(self, cfg: Config, tokenizer, *, rank: int, world_size: int):
        from megatron_codistill import data

        self.cfg, self.tokenizer, self.rank, self.world_size = cfg, tokenizer, rank, world_size
        d = cfg.data
        self.problems = _problems(d.train, d.preset, d, tokenizer, split=d.split, limit=d.train_limit,
                                  max_prompt_tokens=d.max_prompt_tokens, prompt_field=d.prompt_field,
                                  answer_field=d.answer_field)
        seed = cfg.run.seed if cfg.data.shuffle_seed is None else cfg.data.shuffle_seed
        self.sampler = data.EpochSampler(len(self.problems), seed=seed)
        self.per_rank = cfg.algorithm.prompts_per_step // world_size
        self._eval = _eval_sets(cfg, tokenizer)
        self.warm = self._warm_start_problems()

    def next_batch(self) -> list[Problem]:
        """The next step's prompts of this rank (all ranks advance the shared cursor together)."""
        idx = self.sampler.take(self.per_rank * self.world_size)
        return [self.problems[i] for i in idx[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]]

    def sample(self, n: int, rng: random.Random) -> list[Problem]:
        """`n` problems drawn uniformly with `rng` (independent of the cursor)."""
        return [self.problems[rng.randrange(len(self.problems))] for _ in range(n)]

    def sample_warm(self, n: int, rng: random.Random) -> list[Problem]:
        """`n` warm-start problems (with gold solutions) drawn uniformly with `rng`."""
        return [self.warm[rng.randrange(len(self.warm))] for _ in range(n)]

    def _warm_start_problems(self) -> list[Problem]:
        """The warm start's problems (`warm_start.data`, default `data.train`), all with a gold solution."""
        w, d = self.cfg.warm_start, self.cfg.data
        if not (w.small_steps or w.large_steps):
            return []
        path = w.data or d.train
        problems = self.problems if not w.data else _problems(
            path, d.preset, d, self.tokenizer, split=d.split, prompt_field=d.prompt_field,
            answer_field=d.answer_field)
        missing = [i for i, p in enumerate(problems) if not p.solution]
        if missing:
            raise ValueError(f"warm_start: {len(missing)} of {len(problems)} problems of {path} have no gold "
                             f"solution (first: row {missing[0]}); the {d.preset!r} preset reads it from its "
                             "solution field")
        return problems

    def eval_problems(self, e: EvalSetConfig) -> list[Problem]:
        """The problems of one `data.eval` set, loaded when the stream was built."""
        return self._eval[e.name]

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
