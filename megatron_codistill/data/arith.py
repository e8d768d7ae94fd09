"""The tiny CPU task: multi-digit addition with worked steps, learnable by ~1M-parameter models.

A problem `123+459=` has the solution `3900,2510,1400;0582`: for each digit from the right, the two
digits, the carry in and their two-digit sum; then `;` and the zero-padded answer. A model that
learns the steps gets the answer right; the reward checks only the answer after the last `;`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ALPHABET = "0123456789+=,;"
"""Every character a prompt or solution uses (the character tokenizer's vocabulary)."""


def make_problem(rng: random.Random, digits: int) -> dict[str, str]:
    """One problem as a row {prompt, solution, answer}."""
    a, b = rng.randrange(10**digits), rng.randrange(10**digits)
    sa, sb = f"{a:0{digits}d}", f"{b:0{digits}d}"
    answer = f"{a + b:0{digits + 1}d}"
    steps, carry = [], 0
    for da, db in zip(reversed(sa), reversed(sb)):
        total = int(da) + int(db) + carry
        steps.append(f"{da}{db}{carry}{total:02d}")
        carry = total // 10
    return {"prompt": f"{sa}+{sb}=", "solution": ",".join(steps) + ";" + answer, "answer": answer}


def write_dataset(path: str | Path, n: int, digits: int, seed: int, *, min_digits: int | None = None) -> Path:
    """Write `n` problems as JSONL to `path` (deterministic in `seed`); with `min_digits`, each problem's
    operand length is drawn uniformly from [min_digits, digits]."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            d = digits if min_digits is None else rng.randint(min_digits, digits)
            f.write(json.dumps(make_problem(rng, d)) + "\n")
    return path


def extract_answer(text: str) -> str | None:
    """The answer of a generated solution: the text after the last `;` (None when there is none)."""
    if ";" not in text:
        return None
    return text.rsplit(";", 1)[1].strip()
