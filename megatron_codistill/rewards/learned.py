"""A learned reward model as a `RewardFn`: it scores the token ids of prompt + response.

Any callable with the `TokenRewardModel` signature works: a torch module returning [B] scores, or a
Hugging Face sequence-classification model (its `.logits` [B, 1] are read). Batches are right padded
with `pad_token_id` and come with their attention mask, so the model sees each sequence exactly as
if it were alone (tests/rewards/test_learned.py checks this against unpadded single calls).
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


def _as_scores(out: Any, batch: int) -> torch.Tensor:
    import torch

    if hasattr(out, "logits"):
        out = out.logits
    out = torch.as_tensor(out)
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.shape != (batch,):
        raise ValueError(
            f"reward model returned shape {tuple(out.shape)}; expected [{batch}] or [{batch}, 1]"
        )
    return out.detach().float().cpu()


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
            T = max(1, max(len(s) for s in chunk))
            ids = torch.full((len(chunk), T), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, : len(s)] = 1
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
