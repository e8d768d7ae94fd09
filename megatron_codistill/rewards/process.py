"""The parent's handle on one verifier process: start it, talk to it, kill it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from multiprocessing import Pipe

logger = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class VerifierProcess:
    """One verifier: a fresh interpreter running `megatron_codistill.rewards.worker`, on a socket pair.

    A plain subprocess rather than multiprocessing's spawn, which re-runs the parent's __main__ and
    so fails from stdin, notebooks and scripts without a main guard.
    """

    def __init__(self, verify_fn: str, warmup_budget_s: float) -> None:
        self.conn, child = Pipe(duplex=True)
        path = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "megatron_codistill.rewards.worker", str(child.fileno()), verify_fn,
             str(warmup_budget_s)],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child.close()
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far (Linux /proc; None elsewhere or once gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def kill(self, wait: bool = True) -> None:
        """SIGKILL; with wait=False return at once (the exit of a process that holds gigabytes can
        take seconds) and leave the reaping to `reaped()` or `shutdown`."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.conn.close()
        if wait:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("verifier worker %d did not die within 5 s of SIGKILL", self.proc.pid)

    def reaped(self) -> bool:
        """Whether the process has exited and been collected (non-blocking)."""
        return self.proc.poll() is not None


def shutdown(workers: list[VerifierProcess], dying: list[VerifierProcess], owner_pid: int) -> None:
    """Ask every worker to exit, then kill stragglers, and collect the killed ones (`dying`).
    Idempotent; also runs at interpreter exit.

    Only the process that started them may: a forked child exiting must not stop its parent's pool.
    """
    if os.getpid() != owner_pid:
        return
    for w in dying:
        w.kill()
    dying.clear()
    for w in workers:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        w.kill()
    workers.clear()
