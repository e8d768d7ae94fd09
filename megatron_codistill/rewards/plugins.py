"""Reward functions by name: built-ins, user functions given as "pkg.module:function", learned models.

Every reward is a `RewardFn`: `fn(responses, references, **context) -> list[float]`. A user plug-in is
any importable callable with that signature; `load_reward_fn` checks what it returns (one finite
float per response) and names the plug-in in the error when it does not.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

from megatron_codistill.rewards.base import RewardFn
from megatron_codistill.rewards.format_reward import r1_reward
from megatron_codistill.rewards.math_reward import math_reward

REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "math": math_reward,
    "r1": r1_reward,
}
"""Built-in rewards: "math" (1 correct / 0), "r1" (R1-Zero: 1 correct + 0.25 </think> + 0.25 </answer>)."""


def register_reward_fn(name: str, fn: Callable[..., list[float]]) -> None:
    """Add a reward under `name`; ValueError if the name is taken."""
    if name in REWARD_FUNCTIONS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARD_FUNCTIONS[name] = fn


def import_object(path: str) -> Any:
    """Import "pkg.module:attr" (attr may be dotted, e.g. "pkg.mod:Class.method")."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"import path {path!r} must look like 'pkg.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} of reward {path!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (reward {path!r})")
        obj = getattr(obj, part)
    return obj


class _CheckedReward:
    """Wraps a user reward so that a wrong return value fails loudly, naming the reward."""

    def __init__(self, fn: Callable[..., list[float]], name: str) -> None:
        self.fn, self.name = fn, name

    def __call__(self, responses: list[str], references: list[str], **context: Any) -> list[float]:
        out = list(self.fn(responses, references, **context))
        if len(out) != len(responses):
            raise ValueError(f"reward {self.name!r} gave {len(out)} scores for {len(responses)} responses")
        scores = [float(x) for x in out]
        bad = [i for i, x in enumerate(scores) if not math.isfinite(x)]
        if bad:
            raise ValueError(f"reward {self.name!r} gave non-finite scores at {bad[:5]}: {scores[bad[0]]}")
        return scores

    def __repr__(self) -> str:
        return f"Reward({self.name})"


def load_reward_fn(spec: str | Callable[..., list[float]]) -> RewardFn:
    """A registered name ("math", "r1"), an import path "pkg.module:function", or a callable."""
    if callable(spec):
        return _CheckedReward(spec, getattr(spec, "__name__", repr(spec)))
    if spec in REWARD_FUNCTIONS:
        return _CheckedReward(REWARD_FUNCTIONS[spec], spec)
    if ":" not in spec:
        raise ValueError(
            f"unknown reward {spec!r}: use one of {sorted(REWARD_FUNCTIONS)} "
            "or an import path 'pkg.module:function'"
        )
    fn = import_object(spec)
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is a {type(fn).__name__}, not a callable")
    return _CheckedReward(fn, spec)
