"""The embedded engine in a process of its own, so that generation runs while the trainer computes.

`WorkerEngine` starts a child process (spawned, its own torch threads) that builds an `EmbeddedEngine`
and serves commands strictly in the order they are sent: a generation started with `generate_async`
is followed in the child by whatever the parent sends next (a weight update, an RNG query). So every
result equals what the in-process engine would return at the moment of the call, and a schedule that
overlaps generation with training computes exactly what the sequential one does.

Weights arrive through the same calls as the in-process engine's (`begin_weight_update` /
`load_weights` / `commit_weight_update`, or `update_weights_from_disk`), so every weight-sync
strategy works unchanged; tensors travel through shared memory. The child ignores SIGTERM/SIGUSR1
(preemption is the trainer's business: it checkpoints, then shuts the worker down) and exits when
the trainer's end of the pipe closes, so a killed trainer leaves no worker behind.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Iterable

import torch
import torch.multiprocessing as mp

from megatron_codistill.rollout.base import Pending, Rollout, RolloutEngine, SamplingParams

_COMMANDS = ("generate", "begin_weight_update", "load_weights", "commit_weight_update",
             "update_weights_from_disk", "score", "rng_state", "set_rng_state", "expected_weight_names")


class WorkerError(RuntimeError):
    """The rollout worker process failed; the message carries its traceback."""


def _serve(conn, hf_config, engine_kwargs: dict, threads: int) -> None:
    """The child's loop: build the engine, then answer each (command, args) with ("ok", value) or
    ("error", traceback) until "stop" or the parent goes away."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    torch.set_num_threads(threads)
    from megatron_codistill.rollout.embedded import EmbeddedEngine

    try:
        engine = EmbeddedEngine.from_config(hf_config, **engine_kwargs)
        conn.send(("ok", None, None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc(), None))
        return
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return
        if name == "stop":
            conn.send(("ok", None, None))
            return
        start = time.time()
        try:
            value = getattr(engine, name)(*args)
            conn.send(("ok", value, (start, time.time())))
        except BaseException:  # noqa: BLE001 - reported to the parent
            conn.send(("error", traceback.format_exc(), (start, time.time())))


class WorkerEngine(RolloutEngine):
    """An `EmbeddedEngine` (random weights until the first full sync) served by a child process.

    Args: the HF config of the architecture, `threads` for the child's torch, and the keyword
    arguments of `EmbeddedEngine.from_config` (dtype, pad_token_id, max_batch_size, ...).
    """

    def __init__(self, hf_config, *, threads: int = 1, start_timeout_s: float = 300.0, **engine_kwargs) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, hf_config, engine_kwargs, threads), daemon=True,
                                 name="codistill-rollout-worker")
        self._proc.start()
        child.close()
        self._sent = self._received = 0
        self._replies: dict[int, tuple] = {}
        self._deferred: list[int] = []  # commands nobody waits for (weight buckets): checked by the next wait
        self._version = 0
        self._closed = False
        if not self._conn.poll(start_timeout_s):
            self.shutdown()
            raise WorkerError(f"the rollout worker did not start within {start_timeout_s:.0f} s")
        self._unwrap(self._read(), "start")

    # ---------------------------------------------------------------- the pipe

    def _send(self, name: str, *args) -> int:
        """Queue a command; its ticket (replies come back in the order commands were sent)."""
        assert name in _COMMANDS, name
        if self._closed:
            raise WorkerError("the rollout worker was shut down")
        try:
            self._conn.send((name, args))
        except OSError:  # BrokenPipeError: the child is gone
            self._closed = True
            raise WorkerError(f"the rollout worker process died (exit code {self._proc.exitcode})") from None
        self._sent += 1
        return self._sent

    def _read(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._closed = True
            raise WorkerError(f"the rollout worker process died (exit code {self._proc.exitcode})") from None

    def _wait(self, ticket: int, what: str, timing: list | None = None):
        """The value of command `ticket`, reading (and keeping) every earlier reply first; its
        (start, end) in the child is appended to `timing` if given."""
        while self._received < ticket:
            self._received += 1
            self._replies[self._received] = self._read()
        reply = self._replies.pop(ticket)
        earlier = [t for t in self._deferred if t < ticket]
        self._deferred = [t for t in self._deferred if t > ticket]
        for t in earlier:  # the first failure of a sync is the one to report
            self._unwrap(self._replies.pop(t), "a weight update")
        if timing is not None:
            timing.append(reply[2])
        return self._unwrap(reply, what)

    @staticmethod
    def _unwrap(reply: tuple, what: str):
        status, value = reply[0], reply[1]
        if status == "error":
            raise WorkerError(f"rollout worker: {what} failed:\n{value}")
        return value

    def _call(self, name: str, *args):
        return self._wait(self._send(name, *args), name)

    # ---------------------------------------------------------------- RolloutEngine

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[list[Rollout]]:
        return self.generate_async(prompts, n, sampling).result()

    def generate_async(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> Pending:
        ticket = self._send("generate", prompts, n, sampling)

        def wait() -> list[list[Rollout]]:
            timing: list = []
            value = self._wait(ticket, "generate", timing)
            pending.interval = timing[0]  # when the child generated (time.time() seconds)
            return value

        pending = Pending(wait=wait)
        return pending

    def begin_weight_update(self) -> None:
        self._deferred.append(self._send("begin_weight_update"))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        # clones: the child reads the shared storage later, the caller may reuse its buffers at once
        bucket = [(name, t.detach().clone()) for name, t in named_tensors]
        self._deferred.append(self._send("load_weights", bucket))
        return len(bucket)

    def commit_weight_update(self, version: int) -> None:
        self._call("commit_weight_update", version)  # raises the first error of the sync's commands
        self._version = version

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.begin_weight_update()
        self.load_weights(named_tensors)
        self.commit_weight_update(version)

    def update_weights_from_disk(self, model_path, version: int) -> None:
        self._call("update_weights_from_disk", str(model_path), version)
        self._version = version

    def score(self, token_ids: list[list[int]]) -> list[list[float]]:
        return self._call("score", token_ids)

    def expected_weight_names(self) -> list[str]:
        return self._call("expected_weight_names")

    @property
    def version(self) -> int:
        return self._version

    def rng_state(self) -> dict:
        return self._call("rng_state")

    def set_rng_state(self, state: dict) -> None:
        self._call("set_rng_state", state)

    def shutdown(self) -> None:
        """Stop the child (after the commands already sent); kill it if it does not stop in 10 s."""
        if not self._closed:
            self._closed = True
            try:
                self._conn.send(("stop", ()))
            except (OSError, BrokenPipeError):
                pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)
        self._conn.close()
