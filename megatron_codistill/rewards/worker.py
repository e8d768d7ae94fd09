"""Entry point of one verifier process: `python -m megatron_codistill.rewards.worker FD VERIFY_FN`.

FD is this end of a socket pair, VERIFY_FN the "pkg.module:function" to run on each task. Messages:
(task id, response, reference, budget seconds) in, (task id, RewardResult) out; None or a closed
socket ends the loop. Started by `pool.VerifierPool`.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.plugins import import_object


def serve(conn: Connection, verify_fn: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    verify_with_budget = import_object(verify_fn)
    verify_with_budget("\\boxed{x+1}", "1+x", 5.0)  # import and warm up the parser before "ready"
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        task_id, response, reference, budget_s = msg
        try:
            result = verify_with_budget(response, reference, budget_s)
        except BaseException:  # noqa: BLE001 - an alarm landing after verify's own handler still scores 0
            result = RewardResult(0.0, "timeout")
        conn.send((task_id, result))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])), sys.argv[2])
