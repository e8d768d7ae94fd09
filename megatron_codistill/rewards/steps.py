"""Reasoning steps of a response and their exact labels (process supervision, DeepSeekMath §4.1).

A response is cut into steps by delimiter strings (`algorithm.step_delimiters`): a step ends at the
token that completes a delimiter (the delimiter belongs to the step it closes), and whatever text follows
the last delimiter is a final step ending at the response's last token. Work is done on the text of each
token (`pieces`), so step ends are token indices and no re-tokenisation is involved.

The exact checker labels step k of a response 1.0 when it equals step k of the gold solution cut by the
same delimiters, else 0.0. That is exact where the worked solution is a deterministic function of the
problem, as in the arithmetic task (`3900,2510,1400;0582`: one step per digit, then the answer); it is not
for free-form math, whose steps need a process reward model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One reasoning step of a response."""

    end: int
    """Index of the response token that ends the step."""
    text: str
    """The step's text, closing delimiter included."""
    parts: int = 1
    """Steps of the text merged into this one because they end on the same token (a token such as ";3"
    closes one step and holds all of the next)."""


def _check_delimiters(delimiters: list[str] | tuple[str, ...]) -> None:
    if not delimiters or any(not isinstance(d, str) or not d for d in delimiters):
        raise ValueError(f"algorithm.step_delimiters must be a non-empty list of non-empty strings, got {delimiters!r}")


def split_text(text: str, delimiters: list[str] | tuple[str, ...]) -> list[tuple[int, str]]:
    """(end character index, exclusive; step text) of each step of `text`.

    Delimiters are matched leftmost first, the longest at a position winning; a trailing segment without a
    delimiter that holds anything besides whitespace is the last step.
    Example: "39,25;05" with [",", ";"] -> [(3, "39,"), (6, "25;"), (8, "05")].
    """
    _check_delimiters(delimiters)
    by_length = sorted(set(delimiters), key=len, reverse=True)
    steps, start, i = [], 0, 0
    while i < len(text):
        hit = next((d for d in by_length if text.startswith(d, i)), None)
        if hit is None:
            i += 1
            continue
        i += len(hit)
        steps.append((i, text[start:i]))
        start = i
    if text[start:].strip():
        steps.append((len(text), text[start:]))
    return steps


def split_steps(pieces: list[str], delimiters: list[str] | tuple[str, ...]) -> list[Step]:
    """The steps of a response given the text of each of its tokens (`pieces`, in order).

    A step ends at the token holding the last character of its delimiter; the final step (text after the
    last delimiter) ends at the last token. Tokens with no text (EOS) belong to the step they follow; steps
    that end on the same token are merged into one (`Step.parts`), since a token carries one step reward.
    Example: pieces ["3", "9", ",", "0", "5", "<eos>" -> ""] with [","] -> Step(2, "39,"), Step(5, "05").
    """
    ends, total = [], 0
    for p in pieces:
        total += len(p)
        ends.append(total)  # characters up to and including token t
    out: list[Step] = []
    for char_end, step_text in split_text("".join(pieces), delimiters):
        closed = any(step_text.endswith(d) for d in delimiters)
        # a closed step ends at the first token whose text reaches its delimiter's end; the open last one
        # at the last token
        token = next(t for t, e in enumerate(ends) if e >= char_end) if closed else len(pieces) - 1
        if out and out[-1].end == token:
            out[-1] = Step(token, out[-1].text + step_text, out[-1].parts + 1)
        else:
            out.append(Step(token, step_text))
    return out


def exact_step_labels(steps: list[Step], gold_solution: str, delimiters: list[str] | tuple[str, ...]) -> list[float]:
    """1.0 for each step equal to the gold solution's step at the same position, else 0.0 (extra steps 0).

    Surrounding whitespace of a step is ignored. Example, gold "3900,2510;0339" with [",", ";"]
    (steps "3900,", "2510;", "0339"): response steps "3900,", "2511;", "0349", "1" -> [1.0, 0.0, 0.0, 0.0].
    A merged step (parts > 1) is right when it equals the concatenation of as many gold steps.
    """
    gold = [t for _, t in split_text(gold_solution, delimiters)]
    out, k = [], 0
    for s in steps:
        want = "".join(gold[k : k + s.parts])
        out.append(1.0 if k + s.parts <= len(gold) and s.text.strip() == want.strip() else 0.0)
        k += s.parts
    return out
