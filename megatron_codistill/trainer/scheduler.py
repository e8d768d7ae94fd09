"""The order of the phases of RL steps (config `scheduler`): the one place that states it.

Phases of step t (DESIGN §2): G generate, R reward, S score (both models), U^S / U^L the small and
large updates, P the push of the generator's new weights to the rollout engine. Data dependencies:
G_{t+1} needs P_t (after U^S_t); S^L_{t+1} needs U^L_t; both updates need S_t.

    sequential  G_t  R_t  S_t  U^S_t  U^L_t  P_t
    overlap     (G_t started in step t-1)  R_t  S_t  U^S_t  P_t  start G_{t+1}  U^L_t
    async       start G_{t..t+k} (weights of version t-1)  R_t  S_t  U^S_t  U^L_t  P_t

(written for codistill, where the small model generates; in general the generator's update comes
first and P_t follows it, so grpo on the large model overlaps nothing: its only update feeds G_{t+1}.)

overlap is exact: G_{t+1} sees the same prompts, weights (those after U^S_t) and engine RNG as in
the sequential order, so every metric, weight and checkpoint is the same; with an engine that works
in the background (a rollout worker process, SGLang servers) the generation runs during U^L_t.
async lets rollouts lag up to k = `max_staleness` weight versions behind the model they train; their
behaviour log-probs and versions are recorded, and the generator's update weights stale rows by
min(pi_prox / mu, cap) around the trainer's recomputed log-probs (objectives.behaviour_weighted).

Checkpoints (`state_dict`) hold what a resumed run needs to continue exactly: the prompt cursor and
engine RNG from before a generation that is still running (overlap: it is regenerated identically on
resume) or the finished in-flight rollouts themselves (async: they came from older weights).
"""

from __future__ import annotations

from collections import deque

import torch

from megatron_codistill.faults import fault_point
from megatron_codistill.rollout.base import Pending
from megatron_codistill.trainer.metrics import PhaseTimer
from megatron_codistill.trainer.step import InFlight, collect, launch, rollout_metrics, score, update


class Scheduler:
    """Runs RL steps of `run` in the order of `run.cfg.scheduler.mode`, holding in-flight generations."""

    def __init__(self, run) -> None:
        self.run = run
        self.mode = run.cfg.scheduler.mode
        self.ahead = run.cfg.scheduler.max_staleness if self.mode == "async" else 0
        self.queue: deque[InFlight] = deque()
        self._before_launch: dict | None = None  # prompt cursor and engine RNG before the queue's first launch

    def step(self, t: int) -> dict[str, float]:
        """RL step `t` (1-based); its metrics, the same on every rank."""
        run, timer = self.run, PhaseTimer()
        with timer("launch"):  # an engine that cannot work in the background generates here
            self._launch_through(t, min(t + self.ahead, run.cfg.run.steps))
        got = collect(run, self.queue.popleft(), timer)
        batch, staleness = got.batch, (t - 1) - got.batch.weight_versions
        metrics = {**rollout_metrics(batch, got.correct, run.mode.generator), **staleness_metrics(staleness)}
        with timer("score"):
            scores = score(run, batch)
        # the generator's update first (U^S in every mode but grpo on the large model), then the other's
        generator, other = run.mode.generator, "large" if run.mode.generator == "small" else "small"
        self._update(generator, got, scores, staleness, timer, metrics)
        overlap = self.mode == "overlap" and t < run.cfg.run.steps
        if overlap:  # P_t, then G_{t+1} runs while the other model updates
            with timer("sync"):
                metrics.update(run.sync_weights(t))
            with timer("launch_next"):
                self._launch_through(t + 1, t + 1)
        self._update(other, got, scores, staleness, timer, metrics)
        if not overlap:
            with timer("sync"):
                metrics.update(run.sync_weights(t))
        metrics.update(scores.pop("metrics"))
        metrics.update(timer.metrics())
        metrics["perf/tokens_per_s"] = float(batch.response_lengths.sum()) / max(metrics["time/step"], 1e-9)
        return metrics

    def _update(self, name: str, got, scores: dict, staleness, timer: PhaseTimer, metrics: dict) -> None:
        """U^S or U^L, if the mode trains that model."""
        if getattr(self.run.mode, f"train_{name}"):
            with timer(f"update_{name}"):
                metrics.update(update(self.run, name, got.batch, got.task, scores, staleness))

    def _launch_through(self, t: int, last: int) -> None:
        """Start the generations of steps t..last that are not started yet (in step order)."""
        for step in range(self.queue[-1].step + 1 if self.queue else t, last + 1):
            if not self.queue:
                self._before_launch = self._resume_point()
            self.queue.append(launch(self.run, step))
            fault_point("scheduler.launched")

    def _resume_point(self) -> dict:
        return {"prompts": self.run.prompts.state_dict(), "engine_rng": self.run.engine.rng_state()}

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """This rank's part of a checkpoint taken between steps (waits for async in-flight rollouts)."""
        if self.queue and self.ahead == 0:  # overlap: regenerate G_{t+1} on resume, from the same state
            return {**self._before_launch, "in_flight": []}
        in_flight = [{"step": f.step, "problems": f.problems, "n": f.n, "groups": f.pending.result()}
                     for f in self.queue]
        return {**self._resume_point(), "in_flight": in_flight}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` (after the engine holds the checkpoint's weights)."""
        self.run.prompts.load_state_dict(state["prompts"])
        self.run.engine.set_rng_state(state.get("engine_rng", {}))
        self.queue = deque(InFlight(f["step"], f["problems"], Pending(value=f["groups"]), f["n"])
                           for f in state.get("in_flight", []))


def staleness_metrics(staleness: torch.Tensor) -> dict[str, float]:
    """rollout/staleness_mean, _max and the histogram rollout/staleness_<k> (fraction of rollouts
    sampled k weight versions before the generator's current ones)."""
    out = {"rollout/staleness_mean": float(staleness.float().mean()), "rollout/staleness_max": float(staleness.max())}
    for k in range(int(staleness.max()) + 1):
        out[f"rollout/staleness_{k}"] = float((staleness == k).float().mean())
    return out
