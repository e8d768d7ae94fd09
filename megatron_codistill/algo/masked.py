"""Masked reductions and argument checks shared by the objectives.

Legend: B rows (sequences), T tokens. Masks are float [B, T] with 1 on response tokens. Values at
masked positions may be anything (padding log-probs are often garbage or -inf): every function
selects with `torch.where` before arithmetic so that they never leak into results or gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def lookup(registry: Mapping[str, F], name: str, what: str) -> F:
    """`registry[name]`, or ValueError naming `what`, the bad value and the valid names."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"{what} {name!r} is not one of {sorted(registry)}") from None


def check_same_shape(mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """ValueError unless every given tensor has the shape of `mask` ([B, T])."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    for name, t in tensors.items():
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but mask is {tuple(mask.shape)}")


def check_groups(n_rows: int, group_size: int, what: str = "rewards") -> int:
    """Number of groups B for `n_rows` = B * G prompt-major rows; ValueError otherwise."""
    if group_size < 1:
        raise ValueError(f"group_size ({group_size}) must be >= 1")
    if n_rows % group_size:
        raise ValueError(f"{what} has {n_rows} rows, not a multiple of group_size ({group_size})")
    return n_rows // group_size


def zero_outside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is set, 0 elsewhere (NaN/inf at masked positions are dropped, gradient included)."""
    return torch.where(mask > 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def lengths(mask: torch.Tensor) -> torch.Tensor:
    """[B] number of response tokens per row (float)."""
    return mask.sum(dim=-1)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    y = zero_outside(x, mask) * mask
    return y.sum() if dim is None else y.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked entries; 0 (not NaN) where there are none."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def detach_metric(x: torch.Tensor | float) -> torch.Tensor | float:
    return x.detach() if isinstance(x, torch.Tensor) else x
