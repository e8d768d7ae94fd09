"""The task reward of a run, from `reward` in the config.

- `build_reward`: the rule-based verifier, one callable (texts, refs) -> scores. It labels every rollout
  (the generator's task_reward metric, evaluation accuracy, reward-model training).
- `ModelTaskReward` (`reward.kind: model`): a learned outcome reward model replaces the verifier's score
  as the training reward, R_i = correct * sigmoid(score_i).
- `StepRewards` (`algorithm.supervision: process`): per-step rewards [N, T-1] on each step's last token,
  from the exact checker (gold steps, the arithmetic task) or a process reward model (`reward.process_model`).

Legend: N rollouts of the global batch, T tokens; step rewards sit on the log-prob layout (target t+1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from megatron_codistill.config import RewardConfig
from megatron_codistill.rewards.steps import Step, exact_step_labels, split_steps
from megatron_codistill.rollout.base import RolloutBatch
from megatron_codistill.trainer.conditioning import lookup
from megatron_codistill.trainer.exchange import all_gather_rows, row_slice

Reward = Callable[[list[str], list[str]], list[float]]


def verifier_kind(r: RewardConfig) -> str:
    """The rule-based reward of a run: `reward.verifier` when the task reward is a learned model."""
    return r.verifier if r.kind == "model" else r.kind


def build_reward(r: RewardConfig) -> Reward:
    """math: math-verify in worker processes (+ optional R1 format bonuses); arith: the tiny task's
    exact match; plugin: a user function "package.module:function" (a registered name also works).
    With kind = model this is the verifier (`reward.verifier`) that labels the rollouts."""
    kind = verifier_kind(r)
    if kind == "arith":
        from megatron_codistill.rewards.arith import score_arith

        return lambda texts, refs: [r.correct * s for s in score_arith(texts, refs)]
    if kind == "plugin":
        from megatron_codistill.rewards import load_reward_fn

        return load_reward_fn(r.plugin)
    from megatron_codistill.rewards import R1RewardWeights, configure_default_pool, score_r1

    configure_default_pool(num_workers=r.workers, timeout_s=r.timeout_s)
    weights = R1RewardWeights(correct=r.correct, think_close=r.format_think, answer_close=r.format_answer)
    return lambda texts, refs: [x.score for x in score_r1(texts, refs, weights=weights)]


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def sequences(batch: RolloutBatch, rows: range | slice | None = None) -> list[list[int]]:
    """Token ids (prompt + response, no padding) of `rows` of the batch (all by default)."""
    n = batch.tokens.shape[0]
    idx = range(n)[rows] if rows is not None else range(n)
    return [batch.tokens[i, : int(batch.prompt_lengths[i] + batch.response_lengths[i])].tolist() for i in idx]


class ModelTaskReward:
    """R_i = correct * sigmoid(s_i), s_i the outcome model's log-odds that rollout i is right (`reward.model`).

    Each rank scores its share of whole groups; the rewards are gathered to every rank.
    """

    def __init__(self, model, *, pad_token_id: int, correct: float, batch_size: int = 32) -> None:
        from megatron_codistill.rewards.learned import LearnedReward

        self.model, self.correct = model, correct
        self.scorer = LearnedReward(model, pad_token_id=pad_token_id, batch_size=batch_size)

    def scores(self, batch: RolloutBatch) -> torch.Tensor:
        """[N] log-odds of every rollout of the global batch (collective over all ranks)."""
        rank, world = _world()
        mine = row_slice(batch.tokens.shape[0], batch.group_size, rank, world)
        local = torch.tensor(self.scorer.score_ids(sequences(batch, mine)), dtype=torch.float32)
        return all_gather_rows(local)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return self.correct * torch.sigmoid(self.scores(batch))


class StepRewards:
    """Step rewards of a batch: 1/0 from the exact checker, or sigmoid of a process reward model's score.

    index: {prompt ids: problem} (the gold solutions) for the exact checker; model: a `LearnedStepReward`.
    """

    def __init__(self, tokenizer, delimiters: list[str], *, index: dict | None = None, model=None) -> None:
        if (index is None) == (model is None):
            raise ValueError("StepRewards needs exactly one of index (exact checker) or model (process model)")
        self.tokenizer, self.delimiters, self.index, self.model = tokenizer, list(delimiters), index, model
        self._pieces: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        if token_id not in self._pieces:
            self._pieces[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=True)
        return self._pieces[token_id]

    def steps(self, batch: RolloutBatch, i: int) -> list[Step]:
        """The steps of row i's response (token indices relative to the response)."""
        p, q = int(batch.prompt_lengths[i]), int(batch.response_lengths[i])
        return split_steps([self.piece(t) for t in batch.tokens[i, p : p + q].tolist()], self.delimiters)

    def exact_labels(self, batch: RolloutBatch, i: int, steps: list[Step]) -> list[float]:
        """1/0 per step of row i against the gold solution of its prompt."""
        p = int(batch.prompt_lengths[i])
        problem = lookup(self.index, batch.tokens[i, :p].tolist(), "algorithm.supervision=process (exact checker)")
        if not problem.solution:
            raise ValueError("algorithm.supervision=process (exact checker): a training problem has no gold solution")
        return exact_step_labels(steps, problem.solution, self.delimiters)

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """step_rewards, step_mask [N, T-1] (collective with a model), and ps/steps_mean, ps/step_reward_mean."""
        N, T1 = batch.response_mask.shape
        rank, world = _world()
        rows = range(N) if self.model is None else range(N)[row_slice(N, batch.group_size, rank, world)]
        steps = [self.steps(batch, i) for i in rows]
        if self.model is None:
            values = [self.exact_labels(batch, i, s) for i, s in zip(rows, steps)]
        else:
            seqs = sequences(batch, slice(rows.start, rows.stop))
            where = [[int(batch.prompt_lengths[i]) + s.end for s in st] for i, st in zip(rows, steps)]
            logits = self.model.score_steps(seqs, where)
            values = [torch.sigmoid(torch.tensor(v, dtype=torch.float32)).tolist() for v in logits]
        reward, mask = torch.zeros(len(rows), T1), torch.zeros(len(rows), T1)
        for k, (i, st, v) in enumerate(zip(rows, steps, values)):
            at = [int(batch.prompt_lengths[i]) - 1 + s.end for s in st]  # target position of each step's last token
            reward[k, at], mask[k, at] = torch.tensor(v, dtype=torch.float32), 1.0
        if self.model is not None:
            reward, mask = all_gather_rows(reward), all_gather_rows(mask)
        n_steps = mask.sum()
        metrics = {"ps/steps_mean": float(n_steps / max(N, 1)),
                   "ps/step_reward_mean": float((reward * mask).sum() / n_steps.clamp(min=1))}
        return reward, mask, metrics
