"""Per-step metrics: JSONL always, TensorBoard and W&B when enabled; phase timers; a progress bar.

Only rank 0 writes; every other rank gets the same object whose sinks do nothing, so callers never
branch on rank.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from megatron_codistill.log import get_logger

log = get_logger(__name__)


class PhaseTimer:
    """Wall time per phase: `with timer("generate"): ...` -> {"time/generate": s}, plus when each phase
    ran, relative to the timer's creation (the step's start): "timeline/<phase>/start" and ".../end" in
    seconds (a phase entered twice spans both). `span` adds an interval measured elsewhere (a
    generation in a worker process, possibly begun during the previous step: a negative start)."""

    def __init__(self) -> None:
        self.origin = time.time()
        self.seconds: dict[str, float] = defaultdict(float)
        self.spans: dict[str, tuple[float, float]] = {}

    @contextmanager
    def __call__(self, phase: str):
        start, wall = time.perf_counter(), time.time()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            self.span(phase, wall, time.time())

    def span(self, phase: str, start: float, end: float) -> None:
        """Record that `phase` ran from `start` to `end` (time.time() seconds)."""
        old = self.spans.get(phase)
        self.spans[phase] = (min(start, old[0]), max(end, old[1])) if old else (start, end)

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        out["time/step"] = time.time() - self.origin
        for phase, (start, end) in self.spans.items():
            out[f"timeline/{phase}/start"], out[f"timeline/{phase}/end"] = start - self.origin, end - self.origin
        return out


class MetricsLogger:
    """Writes `<run_dir>/metrics.jsonl` (one object per step), TensorBoard and W&B on rank 0."""

    def __init__(self, run_dir: str | Path, *, rank: int, total_steps: int, start_step: int = 0,
                 keep_through: int | None = None, tensorboard: bool = True, wandb_project: str | None = None,
                 wandb_run_name: str | None = None, progress: bool = True, config: dict | None = None):
        """keep_through: the step of the checkpoint the run continues from; rows logged after it by the
        interrupted run are dropped (JSONL and TensorBoard), so every step appears once. None drops all."""
        self.active = rank == 0
        self.run_dir = Path(run_dir)
        self._jsonl = self._tb = self._wandb = self._bar = None
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        truncate_metrics(path, keep_through)
        self._jsonl = open(path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = 0 if keep_through is None else keep_through + 1
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
            except ImportError as e:
                log.warning("tensorboard disabled: %s", e)
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, name=wandb_run_name or self.run_dir.name,
                                         config=config, resume="allow")
            except ImportError:
                log.warning("logging.wandb_project is set but wandb is not installed: W&B disabled")
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        if self._bar is not None:
            shown = {k.split("/", 1)[-1][:12]: f"{clean[k]:.3g}" for k in _PROGRESS_KEYS if k in clean}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        for sink in (self._jsonl, self._tb, self._bar):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.finish()


_PROGRESS_KEYS = ("small/task_reward", "large/task_reward", "kd/reward_mean", "time/step")


def truncate_metrics(path: Path, keep_through: int | None) -> None:
    """Keep the rows of `path` with step <= keep_through (none if None), atomically."""
    if not path.exists():
        return
    kept = []
    if keep_through is not None:
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= keep_through:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a partial last line of a killed run
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of `<run_dir>/metrics.jsonl`, in order (a partial last line is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory?")
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
