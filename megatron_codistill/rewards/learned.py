"""Learned reward models on token ids: an outcome model (`LearnedReward`, a `RewardFn` scoring prompt +
response) and a process model (`LearnedStepReward`, a score at each step's last token).

Any callable with the `TokenRewardModel` signature works: a torch module returning [B] scores, or a
Hugging Face sequence-classification model (its `.logits` [B, 1] are read; with two labels the log-odds
l_1 - l_0). A process model returns per-token scores [B, T] (or an HF token-classification model's
`.logits` [B, T, 1|2]). Batches are right padded with `pad_token_id` and come with their attention mask,
so the model sees each sequence exactly as if it were alone (tests/rewards/test_learned.py checks this
against unpadded single calls). `load_reward_model` reads either kind from a checkpoint directory.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch is imported on first use: verifier workers import this package and need none
    import torch

logger = logging.getLogger(__name__)


class TokenRewardModel(Protocol):
    """Scores sequences of token ids."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """input_ids, attention_mask: [B, T] int64, right padded (mask 1 on real tokens).
        Returns [B] or [B, 1] float scores, or an object whose `.logits` is [B, 1]."""


def as_logits(out: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A model's output as one score per item of `shape` ([B] outcome, [B, T] process), with gradient.

    `.logits` is read when present; a trailing label dimension of 1 is dropped, one of 2 becomes the
    log-odds of label 1 (l_1 - l_0).
    """
    import torch

    if hasattr(out, "logits"):
        out = out.logits
    out = torch.as_tensor(out)
    if out.dim() == len(shape) + 1 and out.shape[-1] == 1:
        out = out[..., 0]
    elif out.dim() == len(shape) + 1 and out.shape[-1] == 2:
        out = out[..., 1] - out[..., 0]
    if tuple(out.shape) != shape:
        dims = ", ".join(map(str, shape))
        raise ValueError(
            f"reward model returned shape {tuple(out.shape)}; expected [{dims}], [{dims}, 1] or [{dims}, 2]"
        )
    return out.float()


def _as_scores(out: Any, batch: int) -> torch.Tensor:
    return as_logits(out, (batch,)).detach().cpu()


def pad_batch(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask [B, T] (T >= 1) of token-id sequences."""
    import torch

    T = max(1, max((len(s) for s in sequences), default=1))
    ids = torch.full((len(sequences), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), T, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class LearnedReward:
    """`RewardFn` that runs `model` on prompt_ids + response_ids from the call's context.

    Non-finite scores become 0.0 (with a warning): a degenerate response must not poison the batch.
    """

    def __init__(
        self,
        model: TokenRewardModel,
        *,
        pad_token_id: int,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1")
        self.model, self.pad_token_id, self.batch_size = model, pad_token_id, batch_size
        self.max_length, self.device = max_length, device

    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        """One score per token-id sequence (longer than `max_length`: keep the last tokens)."""
        import torch

        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            if self.max_length:
                chunk = [s[-self.max_length :] for s in chunk]
            ids, mask = pad_batch(chunk, self.pad_token_id)
            if self.device is not None:
                ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.no_grad():
                scores += _as_scores(self.model(input_ids=ids, attention_mask=mask), len(chunk)).tolist()
        bad = [i for i, x in enumerate(scores) if not math.isfinite(x)]
        if bad:
            logger.warning("reward model gave non-finite scores to %d sequences; scored 0", len(bad))
            scores = [x if math.isfinite(x) else 0.0 for x in scores]
        return scores

    def __call__(
        self, responses: list[str], references: list[str], *, prompt_ids=None, response_ids=None, **_: Any
    ) -> list[float]:
        if response_ids is None:
            raise ValueError("LearnedReward needs response_ids (and usually prompt_ids) in its context")
        if len(response_ids) != len(responses):
            raise ValueError(f"{len(response_ids)} response_ids for {len(responses)} responses")
        prompts = prompt_ids if prompt_ids is not None else [[] for _ in response_ids]
        return self.score_ids([list(p) + list(r) for p, r in zip(prompts, response_ids)])


class LearnedStepReward:
    """A process reward model: its score at the last token of each reasoning step.

    `score_steps(sequences, positions)` runs `model` on each token-id sequence (prompt + response) and
    returns the scores (log-odds of "the step is right") at the given token positions of each.
    """

    def __init__(self, model: TokenRewardModel, *, pad_token_id: int, batch_size: int = 8,
                 device: str | torch.device | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1")
        self.model, self.pad_token_id, self.batch_size, self.device = model, pad_token_id, batch_size, device

    def score_steps(self, sequences: list[list[int]], positions: list[list[int]]) -> list[list[float]]:
        """[B][steps_b] scores at `positions` (indices into each sequence); non-finite ones become 0.0."""
        import torch

        if len(sequences) != len(positions):
            raise ValueError(f"{len(positions)} position lists for {len(sequences)} sequences")
        out: list[list[float]] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk, where = sequences[start : start + self.batch_size], positions[start : start + self.batch_size]
            for i, (s, ps) in enumerate(zip(chunk, where)):
                if any(not 0 <= p < len(s) for p in ps):
                    raise ValueError(f"sequence {start + i}: step positions {ps} outside its {len(s)} tokens")
            ids, mask = pad_batch(chunk, self.pad_token_id)
            if self.device is not None:
                ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.no_grad():
                scores = as_logits(self.model(input_ids=ids, attention_mask=mask), tuple(ids.shape)).cpu()
            out += [[float(scores[i, p]) for p in ps] for i, ps in enumerate(where)]
        bad = sum(not math.isfinite(x) for row in out for x in row)
        if bad:
            logger.warning("process reward model gave non-finite scores to %d steps; scored 0", bad)
            out = [[x if math.isfinite(x) else 0.0 for x in row] for row in out]
        return out


HEADS = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification"}
"""Reward-model heads: an outcome model scores a sequence, a process model every token."""


def load_reward_model(path: str, *, head: str, seed: int, vocab_size: int, pad_token_id: int, what: str):
    """A Hugging Face classification model (`head`: "sequence" or "token") from a checkpoint directory or
    hub name; a directory with a config.json and no weights starts from a fresh init seeded with `seed`.

    what: the config key that named `path`, for errors. ValueError when the checkpoint's architecture has
    another head, or its vocabulary is smaller than the policy tokenizer's (`vocab_size`).
    """
    from pathlib import Path

    import torch
    import transformers

    if head not in HEADS:
        raise ValueError(f"reward model head {head!r} is not one of {sorted(HEADS)}")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: cannot read a Hugging Face config from {path}: {e}") from None
    suffix = HEADS[head].removeprefix("AutoModelFor")
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith(suffix) for a in archs):
        raise ValueError(f"{what}: {path} is a {archs[0]}; a {head} reward model needs a *For{suffix} "
                         "architecture (one score per sequence for an outcome model, per token for a process model)")
    if getattr(config, "vocab_size", vocab_size) < vocab_size:
        raise ValueError(f"{what}: {path} has vocab_size {config.vocab_size} but the policies' tokenizer has "
                         f"{vocab_size} tokens; the reward model reads the policies' token ids")
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id  # sequence heads find each row's last token through it
    auto = getattr(transformers, HEADS[head])
    local = Path(path)
    has_weights = not local.is_dir() or any(local.glob("*.safetensors")) or any(local.glob("*.bin"))
    if has_weights:
        model = auto.from_pretrained(path, config=config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(config)
    return model.float().eval()
