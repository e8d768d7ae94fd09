"""The verifier pool: pathological answers cost at most one deadline and never stop the service."""

import os
import random
import zlib

import pytest

from megatron_codistill.rewards import (
    VerifierPool,
    configure_default_pool,
    default_pool,
    score_math,
    shutdown_default_pool,
    verify_batch,
)

TIMEOUT_S = 3.0  # CPU seconds: short, to keep the test quick


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _noise(n: int) -> str:
    rng = random.Random(0)
    return "".join(rng.choice("{}\\$^_()[]0123456789 abcxyz+-*/=boxed") for _ in range(n))


PATHOLOGICAL = {
    "tower": "\\boxed{9^{9^{9^{9}}}}",
    "factorial": "The answer is \\boxed{(10^{100})!}",
    "noise_100kB": _noise(100_000),
    "boxed_noise": "\\boxed{" + _noise(100_000),
    "unbalanced": "\\boxed{\\frac{1}{2" + "{" * 5000,
    "closing_only": "}" * 50_000 + "\\boxed{3",
}


@pytest.fixture(scope="module")
def fast_pool():
    with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        p.wait_ready()
        yield p


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_outputs_score_zero_and_the_pool_keeps_serving(fast_pool, name):
    before = dict(fast_pool.restart_reasons)
    [result] = fast_pool.score([PATHOLOGICAL[name]], ["3"])
    assert result.score == 0.0
    if result.reason == "timeout":  # every timed-out worker is replaced: by itself ("budget") or killed
        assert fast_pool.restarts == sum(before.values()) + 1
    else:  # cheap to reject: noise without an answer, a truncated box
        assert result.reason in ("no_answer", "wrong", "unparsable_answer", "too_long"), result
    assert fast_pool.score(["so \\boxed{3}"], ["3"])[0].score == 1.0  # still serving


def test_a_timeout_keeps_the_extracted_answer(fast_pool):
    [tower] = fast_pool.score([PATHOLOGICAL["tower"]], ["3"])  # C code ignoring signals: killed by the parent
    [factorial] = fast_pool.score([PATHOLOGICAL["factorial"]], ["3"])  # stopped by the worker's own budget
    assert (tower.reason, tower.extracted) == ("timeout", "9^{9^{9^{9}}}")
    assert (factorial.reason, factorial.extracted) == ("timeout", "(10^{100})!")


def test_mixed_batch_keeps_order(fast_pool):
    responses = ["\\boxed{1}", PATHOLOGICAL["tower"], "\\boxed{2}", PATHOLOGICAL["factorial"], "\\boxed{4}"]
    results = fast_pool.score(responses, ["1", "3", "2", "3", "5"])
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [r.reason for r in results][::2] == ["correct", "correct", "wrong"]


def test_hung_worker_is_killed_and_replaced():
    verify_fn = "tests.rewards.helpers:hanging_verify"  # ignores SIGALRM: only the parent can stop it
    # sleeping costs no CPU: the wall-clock backstop stops it
    with VerifierPool(num_workers=1, timeout_s=1.0, verify_fn=verify_fn, wall_timeout_s=2.0) as pool:
        pool.wait_ready()
        [hung_pid] = pool.pids()
        results = pool.score(["ok", "HANG", "ok", "no"], ["", "", "", ""])
        assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0]
        assert [r.reason for r in results] == ["stub", "timeout", "stub", "stub"]
        assert pool.restarts == 1 and pool.restart_reasons == {"timeout": 1}
        assert hung_pid not in pool.pids()
        pids = pool.pids()
    assert pool.closed
    assert not any(_alive(p) for p in pids + [hung_pid])  # the replacement and the killed one
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(["ok"], [""])
    pool.close()  # idempotent


def test_length_mismatch_is_a_caller_error(fast_pool):
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        fast_pool.score(["a", "b"], ["1"])


def test_public_entry_uses_the_default_pool():
    configure_default_pool(num_workers=1, timeout_s=5.0)
    try:
        assert score_math(["\\boxed{70,000}", "#### 12", None], ["70000", "13", "1"]) == [1.0, 0.0, 0.0]
        reasons = [r.reason for r in verify_batch(["\\boxed{2}", "nothing"], ["2", "2"])]
        assert reasons == ["correct", "no_answer"]
        pids = default_pool().pids()
    finally:
        shutdown_default_pool()
    assert not any(_alive(p) for p in pids)


def test_queue_prefers_the_reference_bucket_and_steals():
    from megatron_codistill.rewards.pool import _Queue

    tasks = [(i, "r", ref) for i, ref in enumerate(["a", "d", "a", "e", "b", "d"])]
    q = _Queue(tasks, 2)
    mine = list(q.buckets[0])
    assert 0 < len(mine) < len(tasks)  # both buckets used
    assert len({zlib.crc32(t[2].encode()) % 2 for t in mine}) == 1
    got = [q.pop(0) for _ in range(len(mine))]  # slot 0 drains its own bucket in order first
    assert got == mine == sorted(mine)
    rest = []
    while q:
        rest.append(q.pop(0))  # then steals from the other bucket
    assert sorted(got + rest) == tasks


def test_a_forked_child_cannot_use_or_stop_the_parents_pool(fast_pool):
    pid = os.fork()
    if pid == 0:  # child: scoring is refused, closing leaves the parent's workers alone
        code = 1
        try:
            fast_pool.score(["\\boxed{1}"], ["1"])
        except RuntimeError:
            code = 0
        fast_pool.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert fast_pool.score(["\\boxed{1}"], ["1"])[0].score == 1.0


def test_workers_that_always_fail_their_self_check_stop_the_pool_with_a_clear_error():
    with VerifierPool(num_workers=1, timeout_s=1.0, verify_fn="tests.rewards.helpers:broken_verify") as pool:
        with pytest.raises(RuntimeError, match=r"6 verifier workers in a row failed to start \(last: warmup"):
            pool.score(["\\boxed{1}"], ["1"])
        assert pool.restart_reasons == {"warmup": 5}
