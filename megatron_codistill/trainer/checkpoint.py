"""Atomic, resumable checkpoints of the whole run.

Layout: `<run_dir>/checkpoints/step_000010/` with one `rank_00000.pt` per rank (both models' shards,
optimizers, schedules, RNG states), `trainer_state.json` (step, data cursor, world layout) and a
`COMPLETE` marker. Everything is written into `step_000010.tmp/` first; after every rank has written,
rank 0 writes the state and the marker and renames the directory. A crash at any moment leaves either
the previous complete checkpoint or the new one; `latest()` ignores anything without the marker.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_codistill.log import get_logger

log = get_logger(__name__)
MARKER = "COMPLETE"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


class CheckpointManager:
    """Saves and finds checkpoints under `<run_dir>/checkpoints`. All ranks call every method."""

    def __init__(self, run_dir: str | Path, *, rank: int, world_size: int, keep_last: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.rank, self.world_size, self.keep_last = rank, world_size, keep_last

    def latest(self) -> Path | None:
        """The newest complete checkpoint directory, or None."""
        if not self.root.is_dir():
            return None
        done = [p for p in self.root.glob("step_*") if p.is_dir() and (p / MARKER).exists()]
        return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)

    def save(self, step: int, rank_state: dict, shared_state: dict) -> Path:
        """Write this rank's `rank_state` (torch objects) and rank 0's `shared_state` (JSON)."""
        final = self.root / step_dir_name(step)
        tmp = self.root / (step_dir_name(step) + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        part = tmp / f"rank_{self.rank:05d}.pt.part"
        torch.save(rank_state, part)
        os.replace(part, tmp / f"rank_{self.rank:05d}.pt")
        _barrier()
        if self.rank == 0:
            state = {"step": step, "world_size": self.world_size, **shared_state}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            (tmp / MARKER).write_text(f"step {step}\n")
            if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        _barrier()
        log.info("checkpoint saved: %s", final)
        return final

    def load(self, path: str | Path) -> tuple[dict, dict]:
        """(this rank's state, the shared state) of checkpoint `path`; checks the world size."""
        path = Path(path)
        if not (path / MARKER).exists():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        shared = json.loads((path / "trainer_state.json").read_text())
        if shared["world_size"] != self.world_size:
            raise ValueError(
                f"{path} was saved with world size {shared['world_size']} but this job has "
                f"{self.world_size} ranks; resume with the same number of ranks (or convert the "
                "models to Hugging Face with checkpoint.export_hf and start a new run from them)"
            )
        rank_file = path / f"rank_{self.rank:05d}.pt"
        return torch.load(rank_file, map_location="cpu", weights_only=False), shared

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        done = sorted((p for p in self.root.glob("step_*") if (p / MARKER).exists() and p.is_dir()),
                      key=lambda p: int(p.name.split("_")[1]))
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def rng_state() -> dict:
    """Python, NumPy-free torch CPU (and CUDA) generator states of this rank."""
    import random

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
