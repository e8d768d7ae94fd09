"""Logging without rank branches: `get_logger(name)` logs on rank 0 only (all ranks at WARNING+)."""

from __future__ import annotations

import logging
import os
import sys


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rank = int(os.environ.get("RANK", "0"))
        return rank == 0 or record.levelno >= logging.WARNING


def get_logger(name: str) -> logging.Logger:
    """A logger named `name` that prints `[codistill] message` to stderr from rank 0."""
    logger = logging.getLogger(name)
    root = logging.getLogger("megatron_codistill")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[codistill %(asctime)s] %(message)s", "%H:%M:%S"))
        handler.addFilter(_RankZero())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger
