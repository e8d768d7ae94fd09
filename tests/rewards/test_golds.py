"""Every gold answer of GSM8K, MATH-500 and Minerva scores 1 when a model writes it, and a perturbed
gold scores 0 (at least 99% of the time). One pooled pass over each file."""

import json
import re
from pathlib import Path

import pytest

from megatron_codistill.rewards import VerifierPool
from megatron_codistill.rewards.extract import gsm8k_answer, last_boxed

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found under {DATA}")


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name / "test.jsonl").read_text().splitlines() if line]


def golds(benchmark: str) -> list[str]:
    if benchmark == "gsm8k":
        return [gsm8k_answer(r["answer"]) for r in _rows("gsm8k")]
    if benchmark == "math500":
        return [r["answer"] for r in _rows("math500")]
    return [last_boxed(r["solution"]) for r in _rows("minerva_math")]


def perturb(gold: str) -> str:
    """Change the last digit (an exponent, a denominator, a last significant digit) or append + 1."""
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if not digits:
        return gold + " + 1"
    i = digits[-1]
    return gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1 :]


def as_response(answer: str) -> str:
    return f"Putting the pieces together, the final answer is $\\boxed{{{answer}}}$."


def restyled(benchmark: str, gold: str) -> str | None:
    """The gold as another writer would put it, so that it is not the same text (math-verify decides):
    `\\dfrac` for `\\frac`; GSM8K integers with thousands separators after `####`."""
    if benchmark == "gsm8k":
        return f"She makes 9 * 2 = 18 dollars.\n#### {int(gold.replace(',', '')):,}"
    return as_response(gold.replace("\\frac", "\\dfrac")) if "\\frac" in gold else None


@pytest.fixture(scope="module")
def slow_pool():
    """Deadlines long enough that a loaded machine cannot turn a correct gold into a timeout."""
    with VerifierPool(num_workers=2, timeout_s=60.0) as p:
        yield p


@pytest.mark.slow  # ~60 s on 2 busy cores, mostly sympy on Minerva's symbolic answers
@pytest.mark.parametrize("benchmark, rows", [("gsm8k", 1319), ("math500", 500), ("minerva", 272)])
def test_golds_verify_and_perturbations_do_not(pool, slow_pool, benchmark, rows):
    gold = golds(benchmark)
    assert len(gold) == rows and all(gold)
    other = [(g, restyled(benchmark, g)) for g in gold if restyled(benchmark, g)]
    assert len(other) == {"gsm8k": 1319, "math500": 68, "minerva": 48}[benchmark]
    written = slow_pool.score([as_response(g) for g in gold] + [r for _, r in other], gold + [g for g, _ in other])
    # a perturbed answer may run into the 5 s deadline: it scores 0 either way
    perturbed = pool.score([as_response(perturb(g)) for g in gold], gold)
    wrong = [(g, r) for g, r in zip(gold + [g for g, _ in other], written) if r.score != 1.0]
    assert not wrong, f"{len(wrong)} golds not accepted, e.g. {wrong[:5]}"
    accepted = [(g, perturb(g)) for g, r in zip(gold, perturbed) if r.score != 0.0]
    assert len(accepted) <= 0.01 * rows, f"perturbed golds accepted: {accepted}"


def test_minerva_times_ten_against_e_notation_golds(slow_pool):
    e_golds = [g for g in golds("minerva") if re.fullmatch(r"-?[\d.]+e[+-]?\d+", g)]
    assert len(e_golds) == 58  # e.g. 4.5e33, 1.77e-6
    written, shifted = [], []
    for g in e_golds:
        mantissa, exponent = g.split("e")
        written.append(as_response(f"{mantissa} \\times 10^{{{int(exponent)}}}"))
        shifted.append(as_response(f"{mantissa} \\times 10^{{{int(exponent) - 1}}}"))
    results = slow_pool.score(written + shifted, e_golds * 2)
    assert [r.score for r in results[: len(e_golds)]] == [1.0] * len(e_golds)
    assert [r.score for r in results[len(e_golds) :]] == [0.0] * len(e_golds)
