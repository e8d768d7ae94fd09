"""A pool of verifier processes with a hard per-answer deadline, whose verdicts do not depend on load.

Why processes: math-verify (sympy) can run for minutes on answers such as `9^{9^{9^{9}}}`, and a thread
cannot be stopped. Each worker scores one answer at a time in its main thread under a budget of CPU
seconds (`verify.verify_with_budget`), which stops most runaway parses from inside. Some never return
to the interpreter (a big-integer power in C ignores signals), so the parent also holds a deadline per
answer on the worker's CPU time (read from /proc; wall-clock time where there is no /proc), plus a
wall-clock backstop for a worker that stops making progress. Past either the answer scores 0
("timeout"), the worker is killed and a fresh one starts while the others keep serving.

Budgets count CPU time, not wall-clock time, so a busy machine (the normal case on a cluster node)
gives the verdicts of an idle one: an answer is cut off after the same amount of work either way.

No worker scores after its state may have been damaged: a worker whose in-process budget fired (in its
warm-up, or anywhere in a later answer) retires after answering and is replaced, and a new worker counts
as ready only after its warm-up self-check (`verify.SELF_CHECK`: equivalent pairs must verify, a
different pair must not). `restarts` and `restart_reasons` report every replacement.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import wait

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.extract import extract_answer
from megatron_codistill.rewards.process import VerifierProcess, shutdown

logger = logging.getLogger(__name__)

DEFAULT_VERIFY_FN = "megatron_codistill.rewards.verify:verify_with_budget"
MAX_RESPONSE_CHARS = 200_000
"""Longer responses keep only their tail, where every answer marker looks (the answer is at the end)."""
WARMUP_BUDGET_S = 60.0
"""CPU seconds each self-check pair may take (the first parse builds the parser's tables)."""
MAX_FAILED_STARTS = 5
"""Consecutive workers that may fail to start (die, or fail the self-check) before `score` gives up."""


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

    timeout_s: CPU seconds an answer may take (the worker's own budget fires at `soft_budget_s`, a
    little earlier, so that it usually answers "timeout" itself). wall_timeout_s: the wall-clock
    backstop per answer (default 10 x timeout_s), for a worker that stops using CPU without answering.

    `verify_fn` ("pkg.module:function", signature `(response, reference, budget_s) -> RewardResult`,
    run in the workers' main threads, optionally with a `self_check` attribute of (response, reference,
    expected score) triples) is what the workers compute: math-verify by default; any other check that
    may hang (running code, a slow symbolic check) can use the same deadlines.

    Use as a context manager or call `close()`; at exit, unclosed pools are shut down anyway.
    """

    def __init__(
        self, num_workers: int = 2, timeout_s: float = 5.0, verify_fn: str = DEFAULT_VERIFY_FN, *,
        wall_timeout_s: float | None = None, warmup_budget_s: float = WARMUP_BUDGET_S,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers ({num_workers}) must be >= 1")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s ({timeout_s}) must be > 0 seconds")
        wall = 10.0 * timeout_s if wall_timeout_s is None else wall_timeout_s
        if wall < timeout_s:
            raise ValueError(f"wall_timeout_s ({wall}) must be >= timeout_s ({timeout_s})")
        self.num_workers, self.timeout_s, self.wall_timeout_s = num_workers, timeout_s, wall
        self.verify_fn, self.warmup_budget_s = verify_fn, warmup_budget_s
        self.soft_budget_s = max(0.8 * timeout_s, timeout_s - 1.0)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._workers: list[VerifierProcess] = [self._spawn() for _ in range(num_workers)]
        self.restart_reasons: Counter[str] = Counter()
        """Replacements by reason: "timeout" (past the parent's deadline: killed), "budget" (its own budget
        fired: retired after answering), "warmup" (failed its self-check, or a budget fired in it),
        "worker_died", "interrupted" (a batch stopped by an exception while it was busy)."""
        self._failed_starts = 0
        self._dying: list[VerifierProcess] = []  # killed, not yet collected
        self._finalizer = weakref.finalize(self, shutdown, self._workers, self._dying, self._pid)

    @property
    def restarts(self) -> int:
        """Workers replaced so far, for any reason (`restart_reasons` says which)."""
        return sum(self.restart_reasons.values())

    def _spawn(self) -> VerifierProcess:
        return VerifierProcess(self.verify_fn, self.warmup_budget_s)

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
        """Block until every worker has passed its warm-up (imports take seconds); benchmarks and tests use it."""
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
        responses_by_id = {t[0]: t[1] for t in tasks}

        def done(i: int, r: RewardResult) -> None:
            if r.extracted is None and r.reason in ("timeout", "worker_died"):
                # stopped before it could say: the answer is still worth reporting (extraction is linear)
                r = RewardResult(r.score, r.reason, extract_answer(responses_by_id[i]).answer, r.parts)
            results[i] = r

        with self._lock:
            self._run(tasks, done)
        return results  # type: ignore[return-value]

    def _run(self, tasks: list, done, wait_ready_s: float | None = None) -> None:
        if self.closed:
            raise RuntimeError("VerifierPool is closed")
        if os.getpid() != self._pid:
            raise RuntimeError(f"VerifierPool was created in process {self._pid}; make a new one here")
        busy: dict[VerifierProcess, _Busy] = {}
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
                    busy[w] = _Busy(task[0], time.monotonic(), w.cpu_seconds())
            if wait_ready_s is not None and time.monotonic() - start > wait_ready_s:
                raise RuntimeError(f"verifier workers not ready after {wait_ready_s} s")
            ready = wait([w.conn for w in self._workers], timeout=self._next_check(busy))
            for conn in ready:
                w = next(w for w in self._workers if w.conn is conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._replace(w, busy, done, "worker_died")
                    continue
                if msg == "ready":
                    w.ready, self._failed_starts = True, 0
                elif msg[0] == "unready":
                    logger.warning("verifier worker %d failed its warm-up: %s", w.pid, msg[1])
                    self._replace(w, busy, done, "warmup")
                else:
                    task_id, result, retire = msg
                    done(task_id, result)
                    busy.pop(w, None)
                    if retire:  # its budget fired: whatever it left half-built, it scores no more
                        self._replace(w, busy, done, "budget")
            for w, b in list(busy.items()):
                if self._past_deadline(w, b) and not w.conn.poll():
                    self._replace(w, busy, done, "timeout")

    def _past_deadline(self, w: VerifierProcess, b: _Busy) -> bool:
        wall = time.monotonic() - b.wall_start
        cpu = w.cpu_seconds()
        if b.cpu_start is None or cpu is None:  # no /proc: the wall clock is all there is
            return wall >= self.timeout_s
        return cpu - b.cpu_start >= self.timeout_s or wall >= self.wall_timeout_s

    def _next_check(self, busy: dict) -> float:
        """Seconds until a busy worker may pass a deadline: CPU time grows no faster than wall time."""
        if not busy:
            return 1.0
        now, soonest = time.monotonic(), float("inf")
        for w, b in busy.items():
            wall = now - b.wall_start
            cpu = w.cpu_seconds()
            if b.cpu_start is None or cpu is None:
                soonest = min(soonest, self.timeout_s - wall)
            else:
                soonest = min(soonest, self.timeout_s - (cpu - b.cpu_start), self.wall_timeout_s - wall)
        return max(0.02, soonest)  # /proc counts CPU in 10 ms ticks: no point polling faster

    def _replace(self, w: VerifierProcess, busy: dict, done, reason: str) -> None:
        if not w.ready:
            self._failed_starts += 1
            if self._failed_starts > MAX_FAILED_STARTS:
                raise RuntimeError(f"{self._failed_starts} verifier workers in a row failed to start "
                                   f"(last: {reason}, exit code {w.proc.poll()}); see the log for why")
        if w in busy:
            done(busy.pop(w).task_id, RewardResult(0.0, reason))
        w.kill(wait=False)
        self._dying.append(w)
        self._workers[self._workers.index(w)] = self._spawn()
        self.restart_reasons[reason] += 1
        logger.debug("verifier worker %d replaced (%s)", w.pid, reason)


@dataclass
class _Busy:
    task_id: int
    wall_start: float
    cpu_start: float | None
    """The worker's CPU seconds when the task was sent (None without /proc)."""
