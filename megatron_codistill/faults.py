"""Deterministic fault injection at named points of the code (for tests of crash recovery).

    CODISTILL_FAULT="checkpoint.after_marker"            raise InjectedFault the first time
    CODISTILL_FAULT="checkpoint.after_marker:exit"       os._exit(17), like a kill: no cleanup runs
    CODISTILL_FAULT="checkpoint.after_marker@3:exit"     the 3rd time the point is reached
    CODISTILL_FAULT="warm_start.step@5:sigterm"          send this process SIGTERM (a preemption)

Unset (the normal case), `fault_point` is one dictionary lookup. Stdlib only: every layer may call it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

EXIT_CODE = 17
_seen: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """Raised at the point named by CODISTILL_FAULT."""


def fault_point(name: str) -> None:
    """Fail here if CODISTILL_FAULT names this point (and its count is reached)."""
    spec = os.environ.get("CODISTILL_FAULT")
    if not spec:
        return
    target, _, action = spec.partition(":")
    target, _, nth = target.partition("@")
    if target != name:
        return
    _seen[name] += 1
    if _seen[name] != int(nth or 1):
        return
    if action == "exit":
        os._exit(EXIT_CODE)
    if action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise InjectedFault(f"injected fault at {name}")
