"""Atomic, verified, resumable checkpoints of the whole run.

Layout: `<run_dir>/checkpoints/<name>/` with one `rank_00000.pt` per rank (both models' shards,
optimizers, schedules, RNG states), `trainer_state.json` (step, data cursor, layout) and a `COMPLETE`
marker that records every file's size and SHA-256. Names: `step_000010` after RL step 10
(`step_000000` right after the warm start) and `warmup_000120` during the warm start (120 of its
steps done); warm-start checkpoints order before every RL one.

Save: everything goes into `<name>.tmp/` first; after every rank has written its file, rank 0 writes
the state and then the marker, and renames the directory. Discovery only considers directories named
exactly `step_N` / `warmup_N` that hold a marker, so a crash at any moment leaves the previous
checkpoints usable. Load verifies the newest candidate (sizes, checksums, a readable state) on every
rank and falls back to the previous one when anything is damaged, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_codistill.faults import fault_point
from megatron_codistill.log import get_logger

log = get_logger(__name__)
MARKER = "COMPLETE"
STATE = "trainer_state.json"
_NAME = re.compile(r"^(warmup|step)_(\d{6,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def warmup_dir_name(done: int) -> str:
    return f"warmup_{done:06d}"


def order_key(name: str) -> tuple[int, int] | None:
    """Sort key of a checkpoint directory name (warm start before RL), None for any other name."""
    m = _NAME.match(name)
    return None if m is None else (0 if m[1] == "warmup" else 1, int(m[2]))


def file_digest(path: Path) -> dict:
    """{"bytes", "sha256"} of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather(obj) -> list:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class DamagedCheckpoint(ValueError):
    """A checkpoint file is missing, truncated or altered (the message names the file)."""


class LayoutMismatch(ValueError):
    """The checkpoint was saved at another parallel layout than this job's."""


@dataclass
class Loaded:
    path: Path
    rank_state: dict
    shared: dict


class CheckpointManager:
    """Saves and finds checkpoints under `<run_dir>/checkpoints`. All ranks call every method.

    layout: this job's layout ({"world_size": W, "large": {"tensor_parallel": t, "pipeline_parallel": p}});
    it is saved with each checkpoint and a resume at another layout stops with both named.
    """

    def __init__(self, run_dir: str | Path, *, rank: int, world_size: int, keep_last: int = 2,
                 layout: dict | None = None):
        self.root = Path(run_dir) / "checkpoints"
        self.rank, self.world_size, self.keep_last = rank, world_size, keep_last
        self.layout = layout or {"world_size": world_size}

    def candidates(self) -> list[Path]:
        """Checkpoint directories holding a marker, newest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if order_key(p.name) and (p / MARKER).is_file()]
        return sorted(found, key=lambda p: order_key(p.name), reverse=True)

    def save(self, name: str, rank_state: dict, shared_state: dict) -> Path:
        """Write this rank's `rank_state` (torch objects) and rank 0's `shared_state` (JSON) as `name`."""
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        rank_file = tmp / f"rank_{self.rank:05d}.pt"
        fault_point("checkpoint.before_rank_file")
        torch.save(rank_state, rank_file.with_suffix(".pt.part"))
        os.replace(rank_file.with_suffix(".pt.part"), rank_file)
        fault_point("checkpoint.after_rank_file")
        digests = _gather((rank_file.name, file_digest(rank_file)))
        if self.rank == 0:
            state = {**shared_state, "layout": self.layout}
            (tmp / STATE).write_text(json.dumps(state, indent=1))
            fault_point("checkpoint.after_state")
            files = dict(digests)
            files[STATE] = file_digest(tmp / STATE)
            (tmp / f"{MARKER}.part").write_text(json.dumps({"name": name, "files": files}, indent=1))
            os.replace(tmp / f"{MARKER}.part", tmp / MARKER)
            fault_point("checkpoint.after_marker")
            if final.exists():  # an earlier save of the same name (same state): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fault_point("checkpoint.after_rename")
            self._prune()
            fault_point("checkpoint.after_prune")
        _barrier()
        log.info("checkpoint saved: %s", final)
        return final

    def load_latest(self) -> Loaded | None:
        """The newest checkpoint that verifies on every rank, or None when there is none.

        A damaged checkpoint is reported (file named) and the previous one tried; if every candidate
        is damaged, DamagedCheckpoint lists them. A checkpoint of another layout raises LayoutMismatch.
        """
        damaged = []
        for path in self.candidates():
            loaded, error = None, None
            try:
                loaded = self._load(path)
            except DamagedCheckpoint as e:
                error = str(e)
            except LayoutMismatch as e:
                error = f"LAYOUT {e}"
            errors = [e for e in _gather(error) if e]
            layout_errors = [e.removeprefix("LAYOUT ") for e in errors if e.startswith("LAYOUT ")]
            if layout_errors:
                raise LayoutMismatch(layout_errors[0])
            if not errors:
                return loaded
            log.warning("checkpoint %s is damaged, trying the previous one: %s", path, "; ".join(errors))
            damaged.append(f"{path.name}: {'; '.join(errors)}")
        if damaged:
            raise DamagedCheckpoint(f"no intact checkpoint in {self.root}: " + " | ".join(damaged))
        return None

    def _load(self, path: Path) -> Loaded:
        """Verify `path` for this rank (marker, state, layout, own rank file) and load it."""
        marker = _read_json(path / MARKER)
        files = marker.get("files") or {}
        shared = _read_json(path / STATE)
        self.check_layout(shared.get("layout", {}), path)
        rank_file = path / f"rank_{self.rank:05d}.pt"
        for f in (path / STATE, rank_file):
            _verify(f, files.get(f.name))
        try:
            state = torch.load(rank_file, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a damaged checkpoint
            raise DamagedCheckpoint(f"{rank_file}: cannot be read ({type(e).__name__}: {e})") from None
        return Loaded(path, state, shared)

    def check_layout(self, saved: dict, path: Path) -> None:
        if saved != self.layout:
            raise LayoutMismatch(
                f"{path} was saved at layout {_describe(saved)}, this job runs {_describe(self.layout)}; "
                "resume with the saved layout (world size, large.tensor_parallel, large.pipeline_parallel), "
                "or export the checkpoint with `codistill export` and start a new run from it")

    def _prune(self) -> None:
        for stale in self.root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep_last <= 0:
            return
        for old in self.candidates()[self.keep_last:]:
            shutil.rmtree(old, ignore_errors=True)


def _describe(layout: dict) -> str:
    large = layout.get("large", {})
    return (f"world size {layout.get('world_size', '?')}, large TP={large.get('tensor_parallel', '?')} "
            f"PP={large.get('pipeline_parallel', '?')}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _verify(path: Path, expected: dict | None) -> None:
    if not path.is_file():
        raise DamagedCheckpoint(f"{path}: missing")
    if expected is None:
        raise DamagedCheckpoint(f"{path}: not listed in the {MARKER} marker")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise DamagedCheckpoint(f"{path}: {size} bytes, the marker records {expected['bytes']} (truncated?)")
    if file_digest(path)["sha256"] != expected["sha256"]:
        raise DamagedCheckpoint(f"{path}: checksum differs from the marker's (the file was altered)")


def rng_state() -> dict:
    """Python and torch CPU (and CUDA) generator states of this rank."""
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
