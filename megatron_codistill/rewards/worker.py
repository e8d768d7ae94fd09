"""Entry point of one verifier process:
`python -m megatron_codistill.rewards.worker FD VERIFY_FN WARMUP_BUDGET_S`.

FD is this end of a socket pair, VERIFY_FN the "pkg.module:function" to run on each task. Protocol:
- start-up: the function's `self_check` pairs (response, reference, expected score), if it has any, are
  scored under WARMUP_BUDGET_S each; then "ready", or ("unready", why) and exit when a pair gave another
  score or a budget fired (a damaged interpreter must not serve).
- tasks: (task id, response, reference, budget s) in, (task id, RewardResult, retire) out. `retire` is
  True when a budget fired during the task (`verify.budget_fired`): the worker exits after answering and
  the pool starts a fresh one before anything else is scored here.
- None or a closed socket ends the loop. Started by `pool.VerifierPool`.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.plugins import import_object
from megatron_codistill.rewards.verify import budget_fired


def warm_up(verify_with_budget, budget_s: float) -> str | None:
    """Run the self-check; None when it passed, else why not."""
    for response, reference, expected in getattr(verify_with_budget, "self_check", ()):
        result = verify_with_budget(response, reference, budget_s)
        if budget_fired():
            return f"the budget fired during warm-up ({response!r} vs {reference!r})"
        if result.score != expected:
            return (f"self-check failed: {response!r} vs {reference!r} scored {result.score} ({result.reason}), "
                    f"expected {expected}")
    return None


def serve(conn: Connection, verify_fn: str, warmup_budget_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    verify_with_budget = import_object(verify_fn)
    failure = warm_up(verify_with_budget, warmup_budget_s)
    if failure is not None:
        conn.send(("unready", failure))
        return
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        task_id, response, reference, budget_s = msg
        escaped = False
        try:
            result = verify_with_budget(response, reference, budget_s)
        except BaseException:  # noqa: BLE001 - a plug-in's escaping alarm still scores 0, and retires us
            result, escaped = RewardResult(0.0, "timeout"), True
        retire = escaped or budget_fired()
        conn.send((task_id, result, retire))
        if retire:
            return


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])), sys.argv[2], float(sys.argv[3]))
