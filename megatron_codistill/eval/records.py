"""Per-sample results as an append-only JSONL file that an interrupted evaluation resumes from.

One line per (benchmark, problem, mode, sample): mode "greedy" (sample 0) or "sampled" (0..n-1).
Lines are written after each scored chunk and flushed to disk, so an interruption loses at most the
chunk in flight; a half-written last line is cut off on reopening.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

Key = tuple[str, int, str, int]


def record_key(r: dict) -> Key:
    return (r["benchmark"], int(r["problem"]), r["mode"], int(r["sample"]))


class SampleStore:
    """The records of one evaluation directory, keyed by `record_key`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[Key, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut by an interruption: drop it, it will be regenerated
            logger.warning("%s: dropping a truncated last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                self.records[record_key(r)] = r
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}:{lineno}: not a sample record ({e}); "
                                 "use another --out directory") from e

    def has(self, key: Key) -> bool:
        return key in self.records

    def count(self, benchmark: str, problem: int, mode: str) -> int:
        """How many samples of (benchmark, problem, mode) are stored; sample ids are 0..count-1."""
        n = 0
        while (benchmark, problem, mode, n) in self.records:
            n += 1
        return n

    def append(self, records: list[dict]) -> None:
        """Add records and make them durable before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[record_key(r)] = r

    def select(self, benchmark: str, problems: list[int], mode: str) -> dict[int, list[dict]]:
        """problem -> its stored records of `mode`, in sample order."""
        out: dict[int, list[dict]] = {}
        for p in problems:
            out[p] = [self.records[(benchmark, p, mode, s)] for s in range(self.count(benchmark, p, mode))]
        return out
