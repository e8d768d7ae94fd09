"""Pushing the trainer's weights to a rollout engine, bucket by bucket, and checking the result.

Legend: B probe sequences, T tokens.

A sync takes an iterable of buckets, each a list of (HF name, full tensor) pairs, as the exporter
(`convert.exporter.export_hf_weights(..., bucket_bytes=...)`) yields them, or as `rebucket` cuts a
flat stream; only one bucket needs to be alive at a time. Strategies, chosen by name:

  direct  in-process engines: begin_weight_update / load_weights per bucket / commit_weight_update
          (a plain `update_weights` over the chained buckets for engines without those steps)
  disk    write the buckets as an HF safetensors checkpoint (one shard per bucket, index, config),
          then `engine.update_weights_from_disk(dir, version)`
  nccl    SGLang's weight-update group: one begin/end session per sync; per bucket,
          names/dtypes/shapes over HTTP and one NCCL broadcast per tensor from this process (group
          rank 0); the last bucket carries the weight version and the cache flush

After a sync, `verify_sync` can score a fixed probe batch on the engine and compare with the
trainer's log-probs of the same tokens; `logprob_mismatch` is also the per-step metric on the
generated tokens (engine behaviour log-probs at temperature 1 vs the trainer's).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

Bucket = Sequence[tuple[str, torch.Tensor]]


@dataclass
class SyncStats:
    """What one sync moved and how long it took."""

    version: int
    seconds: float
    bytes: int
    tensors: int
    buckets: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)

    def metrics(self) -> dict[str, float]:
        return {
            "rollout/sync_seconds": self.seconds,
            "rollout/sync_mb": self.bytes / 1e6,
            "rollout/sync_mb_per_s": self.mb_per_s,
        }


class _Counter:
    """Passes buckets through while counting tensors and bytes."""

    def __init__(self, buckets: Iterable[Bucket]) -> None:
        self.buckets, self.bytes, self.tensors, self.count = buckets, 0, 0, 0

    def __iter__(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        for bucket in self.buckets:
            bucket = list(bucket)
            self.count += 1
            self.tensors += len(bucket)
            self.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
            yield bucket


def rebucket(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list]:
    """Cut a (name, tensor) stream into buckets of at most `bucket_bytes` (a bigger tensor goes alone)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes ({bucket_bytes}) must be >= 1")
    bucket, used = [], 0
    for name, tensor in named_tensors:
        size = tensor.numel() * tensor.element_size()
        if bucket and used + size > bucket_bytes:
            yield bucket
            bucket, used = [], 0
        bucket.append((name, tensor))
        used += size
    if bucket:
        yield bucket


class WeightSyncStrategy(ABC):
    """How buckets reach an engine. `sync` returns when the engine serves `version`."""

    name: ClassVar[str]

    @abstractmethod
    def push(self, engine: Any, buckets: Iterable[list], version: int) -> None: ...

    def sync(self, engine: Any, buckets: Iterable[Bucket], version: int) -> SyncStats:
        counter = _Counter(buckets)
        start = time.perf_counter()
        self.push(engine, counter, version)
        stats = SyncStats(version, time.perf_counter() - start, counter.bytes, counter.tensors, counter.count)
        logger.debug(
            "weight sync %s to version %d: %d tensors in %d buckets, %.1f MB in %.2fs (%.0f MB/s)",
            self.name,
            version,
            stats.tensors,
            stats.buckets,
            stats.bytes / 1e6,
            stats.seconds,
            stats.mb_per_s,
        )
        return stats


class DirectSync(WeightSyncStrategy):
    """In-process engines: the buckets are copied straight into the engine's parameters."""

    name = "direct"

    def push(self, engine: Any, buckets: Iterable[list], version: int) -> None:
        if hasattr(engine, "begin_weight_update"):
            engine.begin_weight_update()
            for bucket in buckets:
                engine.load_weights(bucket)
            engine.commit_weight_update(version)
        else:
            engine.update_weights(chain.from_iterable(buckets), version)


class DiskSync(WeightSyncStrategy):
    """Write `root/v{version}` as an HF safetensors checkpoint, then have the engine load it.

    Args:
        root: a directory every engine (every SGLang server) can read.
        hf_config: written as config.json when given (an HF config object or a dict).
        keep_last: checkpoint directories kept under `root` (older ones are deleted).
    """

    name = "disk"

    def __init__(self, root: str | Path, hf_config: Any = None, keep_last: int = 1) -> None:
        self.root, self.hf_config, self.keep_last = Path(root), hf_config, keep_last

    def push(self, engine: Any, buckets: Iterable[list], version: int) -> None:
        out = self.write(buckets, version)
        engine.update_weights_from_disk(str(out), version)
        self._prune(out)

    def write(self, buckets: Iterable[list], version: int) -> Path:
        """One shard per bucket, `model.safetensors.index.json`, config.json; returns the directory."""
        from megatron_codistill.convert.safetensors_io import INDEX

        out = self.root / f"v{version}"
        tmp = self.root / f".v{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files: list[list[str]] = []
        total = 0
        for k, bucket in enumerate(buckets):
            tensors = {name: _own(t) for name, t in bucket}
            save_file(tensors, str(tmp / f"part-{k:05d}.safetensors"), metadata={"format": "pt"})
            files.append(list(tensors))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {}
        for k, names in enumerate(files):
            final = f"model-{k + 1:05d}-of-{len(files):05d}.safetensors"
            os.replace(tmp / f"part-{k:05d}.safetensors", tmp / final)
            weight_map.update(dict.fromkeys(names, final))
        (tmp / INDEX).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
        )
        if self.hf_config is not None:
            cfg = self.hf_config if isinstance(self.hf_config, dict) else self.hf_config.to_dict()
            (tmp / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out

    def _prune(self, current: Path) -> None:
        dirs = sorted(
            (d for d in self.root.glob("v*") if d.is_dir() and d.name[1:].isdigit()),
            key=lambda d: int(d.name[1:]),
        )
        for d in dirs[: max(0, len(dirs) - self.keep_last)]:
            if d != current:
                shutil.rmtree(d, ignore_errors=True)


class NcclSync(WeightSyncStrategy):
    """SGLang's distributed update; forms the group on first use if it is not formed yet.

    Args:
        master_address: an address of this host the servers can reach (default: `weight_group_address`).
        master_port: a free port for the group's TCP store (default: one picked now).
        backend: "nccl" on GPUs, "gloo" without CUDA (CPU tests); default: by `torch.cuda.is_available()`.
    """

    name = "nccl"

    def __init__(
        self, master_address: str | None = None, master_port: int | None = None, backend: str | None = None
    ) -> None:
        self.master_address = master_address
        self.master_port = master_port or _free_port()
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")

    def push(self, engine: Any, buckets: Iterable[list], version: int) -> None:
        if not hasattr(engine, "update_weights_from_distributed"):
            raise TypeError(f"strategy 'nccl' needs an SGLang engine, got {type(engine).__name__}")
        if getattr(engine, "_group", None) is None:
            address = self.master_address or weight_group_address("", engine.urls)
            engine.init_weight_update_group(address, self.master_port, backend=self.backend)
        engine.update_weights_from_distributed(buckets, version)


STRATEGIES: dict[str, type[WeightSyncStrategy]] = {s.name: s for s in (DirectSync, DiskSync, NcclSync)}


def make_strategy(name: str, **kw) -> WeightSyncStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"weight sync strategy {name!r} is not one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kw)


def sync_weights(
    engine: Any,
    buckets_iterable: Iterable[Bucket],
    version: int,
    strategy: str | WeightSyncStrategy = "direct",
) -> SyncStats:
    """Push every bucket to `engine` so that it serves `version` (strategy by name or instance)."""
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    return strategy.sync(engine, buckets_iterable, version)


def nccl_sync(
    engine: Any, buckets_iterable: Iterable[Bucket], version: int, *, is_source: bool, **strategy_kw
) -> SyncStats | None:
    """The NCCL sync as every trainer rank calls it: the source rank (the one holding the group with
    the servers) pushes; the others only drain the buckets, since exporting is collective, and then
    record the version the servers now serve."""
    if is_source:
        return sync_weights(engine, buckets_iterable, version, NcclSync(**strategy_kw))
    for _ in buckets_iterable:
        pass
    engine._set_version(version)
    return None


def weight_group_address(configured: str, server_urls: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The address SGLang servers dial to join the trainer's end of the weight-update group.

    1. `configured` (rollout.sglang.weight_group_address) when given;
    2. MASTER_ADDR unless it is a loopback name or address: the first trainer host, which
       slurm/codistill.sbatch exports for torchrun and every node resolves; global rank 0, the
       group's source, runs there;
    3. this host's address on the route to the first server (127.0.0.1 for servers on this host).
    Never the address of `gethostname()`, which Debian-style /etc/hosts maps to 127.0.1.1.
    """
    if configured:
        return configured
    master = (os.environ if env is None else env).get("MASTER_ADDR", "")
    if master and not _is_loopback(master):
        return master
    if not server_urls:
        raise ValueError("rollout.sglang.weight_group_address is empty and there is no server URL to route to")
    host = urlparse(server_urls[0]).hostname or ""
    try:
        return _route_address(host)
    except OSError as e:
        raise ValueError(
            f"cannot find this host's address towards {host} ({e}); set rollout.sglang.weight_group_address "
            "to an address of this host the servers can reach"
        ) from None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: the servers resolve it on their side
        return False


def _route_address(host: str) -> str:
    """The local address the kernel picks to reach `host` (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), 9))
        return s.getsockname()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ verification


def logprob_mismatch(
    engine_lp: torch.Tensor, trainer_lp: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Mean and max |engine - trainer| log-prob over the masked tokens ([B, T] each; 0 when empty)."""
    if engine_lp.shape != trainer_lp.shape or mask.shape != trainer_lp.shape:
        raise ValueError(
            f"shapes differ: engine {tuple(engine_lp.shape)}, trainer {tuple(trainer_lp.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
    keep = mask.bool()
    diff = (engine_lp.double() - trainer_lp.double()).abs()[keep]
    if diff.numel() == 0:
        return {"rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0}
    return {"rollout/logprob_diff_mean": float(diff.mean()), "rollout/logprob_diff_max": float(diff.max())}


def probe_tokens(vocab_size: int, batch: int = 4, length: int = 16, seed: int = 0) -> list[list[int]]:
    """A fixed batch of random token sequences ([B][T]) for post-sync checks."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g).tolist()


class WeightSyncMismatch(RuntimeError):
    """The engine's log-probs after a sync differ from the trainer's beyond the tolerance."""


def verify_sync(
    engine: Any,
    tokens: list[list[int]],
    trainer_logprobs: torch.Tensor,
    *,
    atol: float = 1e-4,
    version: int = -1,
) -> dict[str, float]:
    """Score `tokens` ([B][T_b]) on the engine and compare with `trainer_logprobs` [B, max T_b - 1].

    Returns {"rollout/sync_probe_logprob_diff_mean", "rollout/sync_probe_logprob_diff_max"}; raises
    WeightSyncMismatch naming the worst token when the max exceeds `atol`.
    """
    scored = engine.score(tokens)
    engine_lp = torch.zeros_like(trainer_logprobs, dtype=torch.float64)
    mask = torch.zeros_like(engine_lp)
    for b, row in enumerate(scored):
        engine_lp[b, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[b, : len(row)] = 1
    got = logprob_mismatch(engine_lp, trainer_logprobs.double().cpu(), mask)
    metrics = {k.replace("rollout/", "rollout/sync_probe_"): v for k, v in got.items()}
    if got["rollout/logprob_diff_max"] > atol:
        diff = (engine_lp - trainer_logprobs.double().cpu()).abs() * mask
        b, t = divmod(int(diff.argmax()), diff.shape[1])
        raise WeightSyncMismatch(
            f"after the sync to version {version}, engine log-probs differ from the trainer's by up to "
            f"{got['rollout/logprob_diff_max']:.3g} (> atol {atol:g}); worst at probe {b}, token {t + 1}: "
            f"engine {float(engine_lp[b, t]):.6f}, trainer {float(trainer_logprobs[b, t]):.6f}"
        )
    return metrics


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor owning its storage (safetensors refuses shared or strided storage)."""
    t = t.detach().to("cpu").contiguous()
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t
