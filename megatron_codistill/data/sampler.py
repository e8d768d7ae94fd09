"""Deterministic shuffled epochs over N examples, with a cursor that survives checkpoints.

Epoch e visits every index once, in the order of a permutation drawn from `random.Random` seeded with
the text "seed:e" (stable across platforms, processes and Python hash seeds). The state is
(epoch, position, seed, num_examples): restoring it continues exactly where the sequence left off.
"""

from __future__ import annotations

import random


class EpochSampler:
    """`take(k)` yields the next k indices, crossing epoch boundaries as needed."""

    def __init__(self, num_examples: int, *, seed: int = 0, shuffle: bool = True) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples ({num_examples}) must be >= 1: the dataset has no valid row")
        self.num_examples, self.seed, self.shuffle = num_examples, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_examples))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next `k` indices (k may exceed the dataset: epochs follow one another)."""
        if k < 0:
            raise ValueError(f"k ({k}) must be >= 0")
        out: list[int] = []
        while len(out) < k:
            if self.position == self.num_examples:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            step = min(k - len(out), self.num_examples - self.position)
            out += self._order[self.position : self.position + step]
            self.position += step
        return out

    def __iter__(self):
        while True:
            yield self.take(1)[0]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": self.num_examples, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; ValueError if it was saved for a dataset of another size."""
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; got keys {sorted(state)}")
        n = state.get("num_examples", self.num_examples)
        if n != self.num_examples:
            raise ValueError(f"sampler state is for {n} examples but this dataset has {self.num_examples}; "
                             "resume with the same data (and max_prompt_tokens) or start a new run")
        if not 0 <= state["position"] <= n or state["epoch"] < 0:
            raise ValueError(
                f"sampler state out of range: epoch {state['epoch']}, position {state['position']} (of {n})"
            )
        self.seed, self.shuffle = state["seed"], state.get("shuffle", self.shuffle)
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
