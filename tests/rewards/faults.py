"""Deterministic fault injection into verifier workers (imported by path from the worker processes).

`verify_with_faults` is the real `verify_with_budget` plus a hook at each of its points
(`verify.POINTS`). The plan is a directory of token files, named by the environment variable
FAULTS_ENV and shared by every process of a pool: a token `warmup-<point>-<k>` fires at that point of
a warm-up (self-check) call, `call-<point>-<k>` at that point of a scored call, `poison-<k>` damages a
warm-up without firing. Each token is consumed (unlinked, atomically) by the one process that uses it,
so every fault happens exactly once, whichever worker meets it.

Firing a token damages the interpreter the way a budget firing inside `import sympy` does on a loaded
machine (the package loses its `assumptions` attribute, after which every LaTeX parse falls back to the
bare string), then makes the real budget fire at that point with SIGPROF. A worker that kept serving
after that would score equivalent non-identical answers "wrong".
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from megatron_codistill.rewards import verify

FAULTS_ENV = "CODISTILL_TEST_FAULTS_DIR"
_state = {"calls": 0, "installed": False, "fired": False}


def poison() -> None:
    """The state an interrupted `import sympy` leaves behind."""
    import sympy

    if hasattr(sympy, "assumptions"):
        delattr(sympy, "assumptions")


def _take(prefix: str) -> bool:
    plan = os.environ.get(FAULTS_ENV)
    if not plan:
        return False
    for token in sorted(Path(plan).glob(prefix + "-*")):
        try:
            token.unlink()
        except FileNotFoundError:  # another worker took it first
            continue
        return True
    return False


def _hook(point: str) -> None:
    if _state["fired"]:  # one fault per process: it retires after its first
        return
    phase = "warmup" if _state["calls"] <= len(verify.SELF_CHECK) else "call"
    if _take(f"{phase}-{point}"):
        _state["fired"] = True
        poison()
        signal.raise_signal(signal.SIGPROF)  # the budget fires here, through its real handler


def verify_with_faults(response, reference, budget_s):
    if not _state["installed"]:
        verify.set_fault_hook(_hook)
        _state["installed"] = True
    _state["calls"] += 1
    if _state["calls"] == 1 and _take("poison"):
        _state["fired"] = True  # no other fault here: one per process keeps the counts exact
        poison()  # damaged without any budget firing: only the self-check can tell
    return verify.verify_with_budget(response, reference, budget_s)


verify_with_faults.self_check = verify.SELF_CHECK


def write_plan(directory: Path, tokens: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, token in enumerate(tokens):
        (directory / f"{token}-{i}").touch()


def remaining(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())
