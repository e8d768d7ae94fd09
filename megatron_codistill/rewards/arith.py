"""Reward of the tiny arithmetic task: exact match of the answer after the last `;`."""

from __future__ import annotations


def score_arith(responses: list[str], references: list[str]) -> list[float]:
    """1.0 where the text after the last `;` of a response equals its reference answer, else 0.0."""
    out = []
    for text, ref in zip(responses, references, strict=True):
        got = text.rsplit(";", 1)[1].strip() if ";" in text else None
        out.append(1.0 if got is not None and got == ref.strip() else 0.0)
    return out
