"""The typed boundary between rollout engines and training.

Legend: B prompts, G rollouts per prompt, T tokens.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one `generate` call samples."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens per rollout (the stop token counts)."""
    stop_token_ids: tuple[int, ...] = ()
    """Generation of a rollout ends after it emits any of these (it is kept in `response_ids`)."""
    seed: int | None = None
    """Seed for reproducible sampling; None draws from the engine's own generator."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature ({self.temperature}) must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p ({self.top_p}) must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k ({self.top_k}) must be >= 0 (0 disables it)")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens ({self.max_new_tokens}) must be >= 1")


@dataclass
class Rollout:
    """One sampled response.

    `logprobs[t]` is log mu(response_ids[t] | prompt, response_ids[:t]) under the distribution the
    token was actually drawn from (after temperature / top-p / top-k), i.e. the behaviour policy.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """"stop" (a stop token was emitted) or "length" (max_new_tokens reached)."""
    weight_version: int = 0
    """Engine weight version that produced it."""


@dataclass
class RolloutBatch:
    """Rollouts of B prompts x G samples packed as right-padded tensors, prompt-major.

    Row b*G + g is sample g of prompt b. Positions hold prompt then response then padding.
    """

    tokens: torch.Tensor
    """[B*G, T] int64, prompt + response, right padded with `pad_id`."""
    response_mask: torch.Tensor
    """[B*G, T-1] float, 1 where target token t+1 is a response token (aligned with log-probs)."""
    behaviour_logprobs: torch.Tensor
    """[B*G, T-1] float, log mu of each target token (0 outside the response)."""
    prompt_lengths: torch.Tensor
    """[B*G] int64."""
    response_lengths: torch.Tensor
    """[B*G] int64."""
    group_size: int
    """G."""
    finish_reasons: list[str] = field(default_factory=list)
    """[B*G]."""
    weight_versions: torch.Tensor | None = None
    """[B*G] int64, the engine weight version each rollout was sampled with (None: all 0)."""

    def __post_init__(self) -> None:
        if self.weight_versions is None:
            self.weight_versions = torch.zeros(self.tokens.shape[0], dtype=torch.long)

    @property
    def num_groups(self) -> int:
        return self.tokens.shape[0] // self.group_size

    @classmethod
    def from_rollouts(cls, groups: list[list[Rollout]], pad_id: int) -> RolloutBatch:
        """Pack `groups` ([B][G] rollouts, every group the same size G) into tensors."""
        sizes = {len(g) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"every prompt needs the same number of rollouts, got sizes {sorted(sizes)}")
        flat = [r for g in groups for r in g]
        T = max(len(r.prompt_ids) + len(r.response_ids) for r in flat)
        n = len(flat)
        tokens = torch.full((n, T), pad_id, dtype=torch.long)
        mask = torch.zeros(n, max(T - 1, 1))
        mu = torch.zeros(n, max(T - 1, 1))
        for i, r in enumerate(flat):
            p, q = len(r.prompt_ids), len(r.response_ids)
            if len(r.logprobs) != q:
                raise ValueError(f"rollout {i}: {q} response tokens but {len(r.logprobs)} log-probs")
            tokens[i, : p + q] = torch.tensor(r.prompt_ids + r.response_ids, dtype=torch.long)
            # target position t predicts token t+1: response tokens sit at targets p-1 .. p+q-2
            mask[i, p - 1 : p - 1 + q] = 1.0
            mu[i, p - 1 : p - 1 + q] = torch.tensor(r.logprobs, dtype=torch.float32)
        return cls(
            tokens=tokens,
            response_mask=mask,
            behaviour_logprobs=mu,
            prompt_lengths=torch.tensor([len(r.prompt_ids) for r in flat], dtype=torch.long),
            response_lengths=torch.tensor([len(r.response_ids) for r in flat], dtype=torch.long),
            group_size=sizes.pop(),
            finish_reasons=[r.finish_reason for r in flat],
            weight_versions=torch.tensor([r.weight_version for r in flat], dtype=torch.long),
        )


class Pending:
    """A generation started by `RolloutEngine.generate_async`; `result()` waits for its [B][n] rollouts.

    Engines that cannot run in the background return one that is already done (the work happened in
    the call), so a schedule written against `generate_async` is correct with any engine.
    """

    def __init__(self, wait: Callable[[], list[list[Rollout]]] | None = None,
                 value: list[list[Rollout]] | None = None, interval: tuple[float, float] | None = None) -> None:
        self._wait, self._value = wait, value
        self.interval = interval
        """(start, end) of the generation in `time.time()` seconds, where the engine reports it."""

    def done(self) -> bool:
        """True once the rollouts are here (result() will not block)."""
        return self._wait is None

    def result(self) -> list[list[Rollout]]:
        """The rollouts (waits for them; raises what the generation raised)."""
        if self._wait is not None:
            wait, self._wait = self._wait, None
            self._value = wait()
        return self._value  # type: ignore[return-value]


class RolloutEngine(ABC):
    """Anything that samples responses for prompt token ids and accepts new weights."""

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingParams
    ) -> list[list[Rollout]]:
        """Sample `n` responses for each prompt. Returns [B][n] rollouts in prompt order."""

    def generate_async(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> Pending:
        """Start `generate` and return at once where the engine can work in the background (a worker
        process, HTTP servers); the default runs it here and returns a finished `Pending`. The result
        must equal what `generate` would return at the moment of the call: weight updates and RNG use
        queued after this call do not affect it."""
        start = time.time()
        value = self.generate(prompts, n, sampling)
        return Pending(value=value, interval=(start, time.time()))

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load weights given as (Hugging Face name, full tensor) pairs; then `version` == version."""

    @property
    @abstractmethod
    def version(self) -> int:
        """Version of the weights currently served."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release processes, servers and memory. Idempotent."""

    def rng_state(self) -> dict:
        """State of the engine's own sampling generator, for exact resumption (empty if none)."""
        return {}

    def set_rng_state(self, state: dict) -> None:  # noqa: B027 - optional hook
        """Restore what `rng_state` returned."""
