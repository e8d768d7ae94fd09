"""Atomic, verified, resumable checkpoints of the whole run, at any layout.

Layout: `<run_dir>/checkpoints/<name>/` with
- `dist/`: a Megatron-Core distributed checkpoint (torch_dist) of both models' weights, optimizer
  states (Adam moments and step, fp32 main copies, the distributed optimizer's shards gathered into
  parameter shapes), schedules and KL references, under layout-independent keys (`Policy.state_dict`);
- one `rank_00000.pt` per rank: what only that rank has (Python/torch generator states, the rollout
  flow: engine generator and in-flight rollouts);
- `trainer_state.json` (step, data cursor, layout) and a `COMPLETE` marker that records every file's
  size and SHA-256.
Names: `step_000010` after RL step 10 (`step_000000` right after the warm start) and `warmup_000120`
during the warm start (120 of its steps done); warm-start checkpoints order before every RL one.

Save: everything goes into `<name>.tmp/` first; after every rank has written its part, rank 0 writes
the state and then the marker, and renames the directory. Discovery only considers directories named
exactly `step_N` / `warmup_N` that hold a marker, so a crash at any moment leaves the previous
checkpoints usable. Load verifies the newest candidate on every rank (sizes and checksums, each rank a
share of the distributed checkpoint's files; a readable state) and falls back to the previous one when
anything is damaged, naming the file.

Another layout (world size, large TP / PP) reshards on load: each rank reads its slices of the
distributed checkpoint. Per-rank generator states cannot be resharded: at the same world size every
rank keeps its own file's; at another world size every rank reads rank 0's file (the shared data
cursor) and the caller re-seeds (`reseed`).
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
DIST = "dist"
"""The Megatron distributed checkpoint inside a checkpoint directory."""
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
    """The checkpoint was saved at another parallel layout than this job's and cannot be resharded."""


@dataclass
class Loaded:
    """A verified checkpoint: this rank's file, the shared state, and its distributed checkpoint."""

    path: Path
    rank_state: dict
    """This rank's file, or rank 0's when the world size changed (`same_ranks` False)."""
    shared: dict
    resharded_from: dict | None = None
    """The layout it was saved at, when that differs from this job's."""
    same_ranks: bool = True
    """The world size is the one it was saved with: `rank_state` is this rank's own."""

    def common(self) -> dict:
        """The plain (non-tensor) values of the distributed checkpoint, on every rank."""
        from megatron.core import dist_checkpointing

        return dist_checkpointing.load_common_state_dict(str(self.path / DIST))

    def load(self, request: dict) -> dict:
        """`request` (a sharded state dict of this rank's layout) filled from the checkpoint. Collective."""
        from megatron_codistill.convert.mcore_ckpt import load_sharded

        return load_sharded(request, str(self.path / DIST))

    def restore(self, policies: dict) -> None:
        """Fill every policy (weights, optimizer, schedule, reference) from the distributed checkpoint,
        resharded to this job's layout. Collective (all ranks, same policies)."""
        if not (self.path / DIST).is_dir():
            raise ValueError(f"{self.path} has no {DIST}/ (model states in rank files, an older format); "
                             "resume it with the version that wrote it")
        common = self.common()
        missing = sorted(set(policies) - set(common))
        if missing:
            raise ValueError(f"{self.path} has no state for model(s) {missing} (it holds {sorted(common)})")
        request = {name: p.state_dict(saved=common[name]) for name, p in policies.items()}
        state = self.load(request)
        for name, policy in policies.items():
            policy.load_state_dict(state[name])


class CheckpointManager:
    """Saves and finds checkpoints under `<run_dir>/checkpoints`. All ranks call every method.

    layout: this job's layout ({"world_size": W, "large": {"tensor_parallel": t, "pipeline_parallel": p}});
    it is saved with each checkpoint, and a checkpoint of another layout loads resharded.
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

    def save(self, name: str, rank_state: dict, shared_state: dict, sharded: dict | None = None) -> Path:
        """Write `name`: this rank's `rank_state` (torch objects), rank 0's `shared_state` (JSON) and, with
        `sharded`, every rank's part of one Megatron distributed checkpoint (a sharded state dict)."""
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / DIST if sharded is not None else tmp).mkdir(parents=True)
        _barrier()
        if sharded is not None:
            from megatron_codistill.convert.mcore_ckpt import save_sharded

            save_sharded(sharded, str(tmp / DIST))  # collective; returns once every rank's part is written
        rank_file = tmp / f"rank_{self.rank:05d}.pt"
        fault_point("checkpoint.before_rank_file")
        torch.save(rank_state, rank_file.with_suffix(".pt.part"))
        os.replace(rank_file.with_suffix(".pt.part"), rank_file)
        fault_point("checkpoint.after_rank_file")
        digests = _gather(self._own_digests(tmp, rank_file))
        if self.rank == 0:
            state = {**shared_state, "layout": self.layout}
            (tmp / STATE).write_text(json.dumps(state, indent=1))
            fault_point("checkpoint.after_state")
            files = {n: d for part in digests for n, d in part.items()}
            files.update({n: file_digest(tmp / n) for n in _relative_files(tmp) if n not in files})
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

    def _own_digests(self, tmp: Path, rank_file: Path) -> dict[str, dict]:
        """Digests of the files this rank wrote: its rank file and its distributed-checkpoint files
        (torch_dist names them `__<global rank>_<i>.distcp`); rank 0 hashes the rest (metadata)."""
        own = [rank_file.relative_to(tmp).as_posix()]
        if (tmp / DIST).is_dir():
            own += [f"{DIST}/{p.name}" for p in (tmp / DIST).glob(f"__{self.rank}_*.distcp")]
        return {n: file_digest(tmp / n) for n in own}

    def load_latest(self) -> Loaded | None:
        """The newest checkpoint that verifies on every rank, or None when there is none.

        A damaged checkpoint is reported (file named) and the previous one tried; if every candidate
        is damaged, DamagedCheckpoint lists them. A checkpoint of another layout is resharded on load
        (`Loaded.resharded_from`); one without a distributed checkpoint raises LayoutMismatch.
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
        """Verify `path` for this rank (marker, state, layout, the rank file it reads, its share of the
        distributed checkpoint) and load the rank file."""
        marker = _read_json(path / MARKER)
        files = marker.get("files") or {}
        shared = _read_json(path / STATE)
        saved = shared.get("layout", {})
        resharded = saved != self.layout
        if resharded and not any(n.startswith(f"{DIST}/") for n in files):
            raise LayoutMismatch(f"{path} holds no distributed checkpoint to reshard: " + self._mismatch(saved, path))
        same_ranks = saved.get("world_size") == self.world_size
        rank_file = path / f"rank_{self.rank if same_ranks else 0:05d}.pt"
        dist_files = sorted(n for n in files if n.startswith(f"{DIST}/"))
        for name in [STATE, rank_file.name, *dist_files[self.rank::self.world_size]]:
            _verify(path / name, files.get(name))
        try:
            state = torch.load(rank_file, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a damaged checkpoint
            raise DamagedCheckpoint(f"{rank_file}: cannot be read ({type(e).__name__}: {e})") from None
        return Loaded(path, state, shared, resharded_from=saved if resharded else None, same_ranks=same_ranks)

    def describe_reshard(self, loaded: Loaded) -> str:
        """"from <saved layout> to <this job's layout>" for the log."""
        return f"from {_describe(loaded.resharded_from or self.layout)} to {_describe(self.layout)}"

    def _mismatch(self, saved: dict, path: Path) -> str:
        return (f"{path} was saved at layout {_describe(saved)}, this job runs {_describe(self.layout)}; "
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


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


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


def reseed(seed: int, step: int, rank: int) -> None:
    """Fresh generator streams after a world-size change, where saved per-rank states cannot be carried:
    Python's from (seed, step, rank), torch's from (seed, step) alike on every rank as at the start."""
    import random

    random.seed(f"{seed}/{step}/{rank}")
    torch.manual_seed(seed + step)


def set_rng_state(state: dict) -> None:
    import random

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
