"""Find the final answer in a model response or in a reference solution.

Every function here is linear in the length of the text (no backtracking regular expressions), so
100 kB of noise costs milliseconds; they still run inside the verifier workers, under the deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BOX_COMMANDS = ("\\boxed", "\\fbox")
_BOX = re.compile("|".join(re.escape(c) for c in BOX_COMMANDS) + r"(?![A-Za-z])")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_NUMBER_THEN_WORDS = re.compile(r"^(\$?\s*[-+]?[\d,]*\.?\d+)\s+[A-Za-z][A-Za-z ]*$")


def _drop_unit_words(answer: str) -> str:
    """Plain-text answers: `18 dollars` -> `18` (math-verify reads the words as variables)."""
    m = _NUMBER_THEN_WORDS.match(answer)
    return m.group(1) if m else answer


@dataclass(frozen=True)
class Extraction:
    """An extracted answer and how it was found."""

    answer: str | None
    """The answer text, stripped; None when nothing was found."""
    method: str
    """"answer_tag", "boxed", "gsm8k", "answer_is" or "none"."""


def _matching_braces(text: str) -> dict[int, int]:
    """Map the index of every balanced `{` to the index of its `}`; `\\{` and `\\}` are literals."""
    match: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # an escaped character never groups
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}` (nested braces allowed).

    A truncated (unbalanced) box is skipped in favour of the last complete one before it. The brace-less
    form `\\boxed 5` is read up to the next space or `$`. Returns None when there is no complete box.
    """
    starts = sorted((m.start(), m.end()) for m in _BOX.finditer(text))
    if not starts:
        return None
    match = _matching_braces(text)
    for _, end in reversed(starts):
        j = end
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            if j in match:
                content = text[j + 1 : match[j]].strip()
                if content:
                    return content
            continue
        if j > end:  # `\boxed 5`: one token, up to whitespace or `$`
            m = re.match(r"[^\s$]+", text[j:])
            if m:
                return m.group(0)
    return None


def answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` pair, or None."""
    close = text.rfind("</answer>")
    if close < 0:
        return None
    open_ = text.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    return text[open_ + len("<answer>") : close].strip()


def gsm8k_answer(text: str) -> str | None:
    """Text after the last `####` up to the end of its line (GSM8K's answer marker), or None."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    answer = text[pos + 4 :].split("\n", 1)[0].strip()
    return _drop_unit_words(answer) if answer else None


def answer_is(text: str) -> str | None:
    """What follows the last "the answer is" up to the end of that sentence, or None."""
    last = None
    for last in _ANSWER_IS.finditer(text):  # noqa: B007 - we want the last match
        pass
    if last is None:
        return None
    rest = text[last.end() :].lstrip(" :")
    end = _SENTENCE_END.search(rest)
    answer = (rest[: end.start()] if end else rest).strip()
    return _drop_unit_words(answer) if answer else None


def extract_answer(text: str) -> Extraction:
    """The final answer of a response, trying in order: `<answer>` tags (then a box inside them),
    the last box, GSM8K's `####`, "the answer is". Nothing found -> Extraction(None, "none")."""
    tagged = answer_tag(text)
    if tagged is not None:
        inner = last_boxed(tagged)
        return Extraction(inner if inner is not None else (tagged or None), "answer_tag")
    for method, fn in (("boxed", last_boxed), ("gsm8k", gsm8k_answer), ("answer_is", answer_is)):
        found = fn(text)
        if found is not None:
            return Extraction(found, method)
    return Extraction(None, "none")


def reference_answer(reference: str) -> str:
    """The gold answer of a reference: its last box or `####` answer if it has one, else all of it."""
    for fn in (last_boxed, gsm8k_answer):
        found = fn(reference)
        if found is not None:
            return found
    return reference.strip()
