"""A rollout engine that behaves like a slow remote server: every call (generation, weight updates, RNG
queries) goes through one FIFO served by a background thread that sleeps a random time before each
command, longer on straggler ranks. Results are those of the wrapped engine at the moment of the call,
as the `RolloutEngine.generate_async` contract requires; only their timing is random."""

from __future__ import annotations

import queue
import random
import threading
import time
from concurrent.futures import Future

from megatron_codistill.rollout.base import Pending, RolloutEngine


class DelayedEngine(RolloutEngine):
    def __init__(self, inner: RolloutEngine, *, seed: int, max_delay_s: float = 0.05, straggle: float = 1.0):
        self.inner = inner
        self._rng = random.Random(seed)
        self.max_delay_s, self.straggle = max_delay_s, straggle
        self._commands: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            fn, args, future = item
            time.sleep(self._rng.uniform(0, self.max_delay_s) * self.straggle)
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - delivered to the caller
                future.set_exception(e)

    def _submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._commands.put((fn, args, future))
        return future

    def _call(self, fn, *args):
        return self._submit(fn, *args).result()

    def generate(self, prompts, n, sampling):
        return self._call(self.inner.generate, prompts, n, sampling)

    def generate_async(self, prompts, n, sampling) -> Pending:
        return Pending(wait=self._submit(self.inner.generate, prompts, n, sampling).result)

    def update_weights(self, named_tensors, version):
        self._call(self.inner.update_weights, list(named_tensors), version)

    def begin_weight_update(self):
        self._call(self.inner.begin_weight_update)

    def load_weights(self, bucket):
        return self._call(self.inner.load_weights, [(n, t.clone()) for n, t in bucket])

    def commit_weight_update(self, version):
        self._call(self.inner.commit_weight_update, version)

    def update_weights_from_disk(self, path, version):
        self._call(self.inner.update_weights_from_disk, path, version)

    def score(self, token_ids):
        return self._call(self.inner.score, token_ids)

    @property
    def version(self) -> int:
        return self._call(lambda: self.inner.version)

    def rng_state(self) -> dict:
        return self._call(self.inner.rng_state)

    def set_rng_state(self, state: dict) -> None:
        self._call(self.inner.set_rng_state, state)

    def shutdown(self) -> None:
        self._commands.put(None)
        self._thread.join(timeout=10)
        self.inner.shutdown()
