"""Verdicts that neither injected faults nor a loaded machine can change.

A budget that fires in a worker (in its warm-up or at any point of a later answer) may leave the
interpreter damaged; the pool must retire that worker before it scores again, and a fresh worker must
pass its self-check before it serves. Faults are injected deterministically (tests/rewards/faults.py).
"""

import os
import subprocess
import sys

import pytest

from megatron_codistill.rewards import VerifierPool
from megatron_codistill.rewards.verify import POINTS
from tests.rewards.faults import FAULTS_ENV, remaining, write_plan
from tests.rewards.pairs import GOLDS, IDLE_VERDICTS, PAIRS, RESPONSES

FAULTY = "tests.rewards.faults:verify_with_faults"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_idle_verdicts(pool):
    assert len(PAIRS) == 41
    assert [r.reason for r in pool.score(RESPONSES, GOLDS)] == IDLE_VERDICTS


def test_the_injected_damage_is_real():
    """Without a replacement, a worker carrying the damage would score equivalent answers wrong."""
    got = run_python(
        "from tests.rewards.faults import poison\n"
        "from megatron_codistill.rewards.verify import verify_with_budget as v\n"
        "print(v('\\\\boxed{\\\\pi/3}', '\\\\frac{\\\\pi}{3}', 30.0).reason); poison()\n"
        "print(v('\\\\boxed{(x+1)^2}', 'x^2+2x+1', 30.0).reason)"
    )
    assert got.split() == ["correct", "unparsable_reference"]  # the gold no longer parses either


def test_faults_in_warmup_and_in_every_point_of_a_call_never_change_a_verdict(tmp_path, monkeypatch):
    plan = tmp_path / "plan"
    calls = [f"call-{point}" for point in POINTS]
    write_plan(plan, ["warmup-parse", "warmup-verify", "poison", *calls])
    monkeypatch.setenv(FAULTS_ENV, str(plan))
    with VerifierPool(num_workers=2, timeout_s=10.0, verify_fn=FAULTY) as pool:
        pool.wait_ready()
        # two workers whose budget fired in the warm-up, one damaged without a budget firing
        assert pool.restart_reasons == {"warmup": 3}
        assert [name.rsplit("-", 1)[0] for name in remaining(plan)] == sorted(calls)
        for _ in POINTS:  # each scored call meets the next fault in the order of the points
            [r] = pool.score(["So the answer is $\\boxed{\\frac{2}{4}}$."], ["\\frac{1}{2}"])
            assert (r.score, r.reason, r.extracted) == (0.0, "timeout", "\\frac{2}{4}")
        assert remaining(plan) == []
        assert pool.restart_reasons == {"warmup": 3, "budget": len(POINTS)}
        results = pool.score(RESPONSES, GOLDS)
        assert pool.restarts == 3 + len(POINTS)  # the pairs themselves needed no replacement
    assert [r.reason for r in results] == IDLE_VERDICTS
    assert [r.extracted for r in results[:3]] == ["(1, -2)", "45^\\circ", "\\pi/3"]


def test_a_budget_firing_at_once_never_interrupts_the_imports():
    """The poisoning seen on loaded machines: a budget firing inside `import sympy`. Imports come first now."""
    got = run_python(
        "from megatron_codistill.rewards.verify import budget_fired, verify_with_budget as v\n"
        "r = v('\\\\boxed{\\\\pi/3}', '\\\\frac{\\\\pi}{3}', 1e-6)\n"
        "import sympy, sys\n"
        "print(r.reason, r.extracted, budget_fired(), hasattr(sympy, 'assumptions'),\n"
        "      'math_verify.parser' in sys.modules)"
    )
    assert got.split() == ["timeout", "\\pi/3", "True", "True", "True"]


@pytest.mark.slow  # saturates every core of the machine for about a minute: run it rarely
def test_verdicts_under_load_equal_the_idle_ones():
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        for _ in range(3):  # fresh pools: the warm-up runs under load too
            with VerifierPool(num_workers=2, timeout_s=5.0) as pool:
                results = pool.score(RESPONSES, GOLDS)
            assert [r.reason for r in results] == IDLE_VERDICTS
    finally:
        for h in hogs:
            h.kill()
            h.wait()
