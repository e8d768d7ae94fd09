"""A pool of verifier processes with a hard per-answer deadline.

Why processes: math-verify (sympy) can run for minutes on answers such as `9^{9^{9^{9}}}`, and a thread
cannot be stopped. Each worker scores one answer at a time in its main thread under a SIGALRM budget
(`verify.verify_with_budget`), which stops most runaway parses from inside. Some never return to the
interpreter (a big-integer power in C ignores signals), so the parent also holds a wall-clock deadline
per answer: past it the answer scores 0 ("timeout"), the worker is killed and a fresh one starts while
the others keep serving. `score` returns after at most ceil(B / workers) deadlines.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
import zlib
from collections import deque
from multiprocessing.connection import wait

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.process import VerifierProcess, shutdown

logger = logging.getLogger(__name__)

DEFAULT_VERIFY_FN = "megatron_codistill.rewards.verify:verify_with_budget"
MAX_RESPONSE_CHARS = 200_000
"""Longer responses keep only their tail, where every answer marker looks (the answer is at the end)."""


class _Queue:
    """Pending (id, response, reference) tasks, bucketed by reference so that the G responses of a
    prompt tend to meet the worker that already parsed (and cached) their reference; an idle worker
    with an empty bucket takes from the fullest one."""

    def __init__(self, tasks: list, slots: int) -> None:
        self.buckets: list[deque] = [deque() for _ in range(slots)]
        for t in tasks:
            self.buckets[zlib.crc32(t[2].encode("utf-8", "replace")) % slots].append(t)
        self.size = len(tasks)

    def __bool__(self) -> bool:
        return self.size > 0

    def pop(self, slot: int):
        self.size -= 1
        if self.buckets[slot]:
            return self.buckets[slot].popleft()
        return max(self.buckets, key=len).pop()

    def push_back(self, slot: int, task) -> None:
        self.size += 1
        self.buckets[slot].appendleft(task)


class VerifierPool:
    """`num_workers` verifier processes; `score` is thread-safe (one batch at a time).

    `verify_fn` ("pkg.module:function", signature `(response, reference, budget_s) -> RewardResult`,
    run in the workers' main threads) is what the workers compute: math-verify by default; any other
    check that may hang (running code, a slow symbolic check) can use the same deadlines.

    Use as a context manager or call `close()`; at exit, unclosed pools are shut down anyway.
    """

    def __init__(
        self, num_workers: int = 2, timeout_s: float = 5.0, verify_fn: str = DEFAULT_VERIFY_FN
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers ({num_workers}) must be >= 1")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s ({timeout_s}) must be > 0 seconds")
        self.num_workers, self.timeout_s, self.verify_fn = num_workers, timeout_s, verify_fn
        # the in-worker alarm fires first, so a worker usually recovers itself and need not be respawned
        self.soft_budget_s = max(0.8 * timeout_s, timeout_s - 1.0)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._workers: list[VerifierProcess] = [VerifierProcess(self.verify_fn) for _ in range(num_workers)]
        self.restarts = 0
        """Workers killed and replaced so far (one per answer that ran past its deadline or crashed)."""
        self._failed_starts = 0
        self._dying: list[VerifierProcess] = []  # killed, not yet collected
        self._finalizer = weakref.finalize(self, shutdown, self._workers, self._dying, self._pid)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every worker has started (imports take seconds); the benchmarks use it."""
        with self._lock:
            self._run([], lambda *_: None, wait_ready_s=timeout_s)

    def score(self, responses: list, references: list[str]) -> list[RewardResult]:
        """Verify responses[i] against references[i]; never raises on a response, whatever it is."""
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        results: list[RewardResult | None] = [None] * len(responses)
        tasks = []
        for i, (resp, ref) in enumerate(zip(responses, references)):
            if isinstance(resp, bytes):
                resp = resp.decode("utf-8", errors="replace")
            if not isinstance(resp, str) or not isinstance(ref, str):
                results[i] = RewardResult(0.0, "invalid_input")
            else:
                tasks.append((i, resp[-MAX_RESPONSE_CHARS:], ref))

        def done(i: int, r: RewardResult) -> None:
            results[i] = r

        with self._lock:
            self._run(tasks, done)
        return results  # type: ignore[return-value]

    def _run(self, tasks: list, done, wait_ready_s: float | None = None) -> None:
        if self.closed:
            raise RuntimeError("VerifierPool is closed")
        if os.getpid() != self._pid:
            raise RuntimeError(f"VerifierPool was created in process {self._pid}; make a new one here")
        busy: dict[VerifierProcess, tuple[int, float]] = {}  # worker -> (task id, deadline)
        try:
            self._loop(_Queue(tasks, len(self._workers)), busy, done, wait_ready_s)
        except BaseException:
            # interrupted (Ctrl-C, an error): busy workers would answer stale tasks in the next batch
            for w in list(busy):
                self._replace(w, busy, lambda *_: None, "interrupted")
            raise

    def _loop(self, pending: _Queue, busy: dict, done, wait_ready_s: float | None) -> None:
        self._dying[:] = [w for w in self._dying if not w.reaped()]
        start = time.monotonic()
        while pending or busy or (wait_ready_s is not None and not all(w.ready for w in self._workers)):
            for slot, w in enumerate(self._workers):
                if pending and w.ready and w not in busy:
                    task = pending.pop(slot)
                    try:
                        w.conn.send((*task, self.soft_budget_s))
                    except OSError:  # died while idle: retry the task on its replacement
                        pending.push_back(slot, task)
                        self._replace(w, busy, done, "worker_died")
                        continue
                    busy[w] = (task[0], time.monotonic() + self.timeout_s)
            now = time.monotonic()
            next_deadline = min((d for _, d in busy.values()), default=now + 1.0)
            if wait_ready_s is not None and now - start > wait_ready_s:
                raise RuntimeError(f"verifier workers not ready after {wait_ready_s} s")
            for conn in wait([w.conn for w in self._workers], timeout=max(0.0, next_deadline - now)):
                w = next(w for w in self._workers if w.conn is conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._replace(w, busy, done, "worker_died")
                    continue
                if msg == "ready":
                    w.ready, self._failed_starts = True, 0
                else:
                    done(msg[0], msg[1])
                    busy.pop(w, None)
            now = time.monotonic()
            for w, (_, deadline) in list(busy.items()):
                if now >= deadline and not w.conn.poll():
                    self._replace(w, busy, done, "timeout")

    def _replace(self, w: VerifierProcess, busy: dict, done, reason: str) -> None:
        if not w.ready:
            self._failed_starts += 1
            if self._failed_starts > 3:
                raise RuntimeError(f"verifier workers keep dying at start-up (exit code {w.proc.poll()})")
        if w in busy:
            done(busy.pop(w)[0], RewardResult(0.0, reason))
        w.kill(wait=False)
        self._dying.append(w)
        self._workers[self._workers.index(w)] = VerifierProcess(self.verify_fn)
        self.restarts += 1
        logger.debug("verifier worker %d replaced (%s)", w.pid, reason)
