"""The one result type of the objectives: a differentiable loss and the metrics to log with it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Metric = torch.Tensor | float


@dataclass
class LossOutput:
    """What every composed objective returns.

    `loss` is a 0-dim tensor to call `.backward()` on. `metrics` maps names such as `loss/clip_frac`,
    `is/ess` or `kd/reward_mean` to detached 0-dim tensors (or floats), so the trainer logs them
    without recomputing anything and without forcing a device sync until it reads them.
    """

    loss: torch.Tensor
    metrics: dict[str, Metric] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Metrics as Python floats (one device sync); for logging."""
        return {k: float(v) for k, v in self.metrics.items()}
