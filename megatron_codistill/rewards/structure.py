"""Answers with several items, compared item by item: never as sets.

math-verify reads a comma-separated answer as a set, so `\\boxed{-2}` would pass for the gold `-2,-2`
and `16, 3, 1` for `16,3,1,1`. Here the items (split at top-level commas, outside every bracket) are
compared one by one with the single-answer comparison, by the rule the gold's shape selects:

- **Bare list** `1, -2`, `3, 5, 7`, `-2, -2`: a multiset. The same items with the same multiplicities,
  in any order (MATH's "enter all the solutions, separated by commas"; OlympiadBench's multiple
  answers). For `1, -2`: `-2, 1` and `\\{1, -2\\}` pass; `1`, `1, -2, -2` fail. For `-2, -2`: `-2` fails.
  The prediction may wrap its list in `( )`, `[ ]` or `\\{ \\}`; an item `a \\pm b` counts as the two
  items `a + b` and `a - b` (on both sides, and for a gold of one such item).
- **Parenthesised** `(1, -2)`, `\\left( 3, \\frac{\\pi}{2} \\right)`: an ordered tuple (points, ordered
  pairs and triples). `(1, -2)` and `1, -2` pass; `(-2, 1)`, `[1, -2]` (an interval) and `(1, -2, 0)` fail.
- **Named items** `a=-2, b=3`: ordered by the gold. A prediction naming every item is paired by name
  (`b=3, a=-2` passes, `a=3, b=-2` fails); an unnamed one by position (`-2, 3` passes, `3, -2` fails).
- **One item**: compared whole by the caller; a prediction listing several items fails (`5, 5` for `5`).
- **Other bracketed golds** (intervals `[a, b)` and `[a, b]`, unions, explicit sets `\\{a, b\\}`): compared
  whole by math-verify, which knows their semantics (intervals by their brackets, sets as sets).

Known to be judged wrong: a bare list whose order matters ("find a and b" with the gold `2, 5`) also
accepts `5, 2`; such golds should be written as a tuple `(2, 5)` or with names `a=2, b=5`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_MATCHED_ITEMS = 32
"""Multisets with more items are compared in order (the matching costs up to n^2 comparisons)."""

_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])")
_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}
_NAME = re.compile(r"^\s*([A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)\s*=\s*(?P<value>.+)$", re.S)

Compare = Callable[[str, str], str]
"""compare(gold_item, pred_item) -> "correct", "wrong", "unparsable_reference", ..."""


def _tokens(s: str):
    """(index, token) of the brackets of `s`: `\\{` and `\\}` are braces, other escapes (`\\,`) are skipped."""
    i = 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            yield i, s[i : i + 2]
            i += 2
        elif s[i] == "\\":
            i += 2
        else:
            if s[i] in "([{)]}":
                yield i, s[i]
            i += 1


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """`s` cut at the `sep` characters outside every bracket: `(1, 2), 3` -> [`(1, 2)`, `3`]."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth = depth + 1 if s[i + 1] == "{" else max(0, depth - 1)
            i += 2
            continue
        c = s[i]
        if c == "\\":  # an escaped character never separates (`1\\,000`)
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _group(s: str) -> tuple[str, str, str] | None:
    """(open, close, inside) when all of `s` is one bracketed group, e.g. `(1, 2)`; `(0,1) \\cup (2,3)` is not."""
    depth, first = 0, None
    for i, tok in _tokens(s):
        if tok in ("(", "[", "{", "\\{"):
            if depth == 0:
                if i != 0:
                    return None
                first = tok
            depth += 1
        else:
            depth -= 1
            if depth < 0 or first is None:
                return None
            if depth == 0:
                return (first, tok, s[len(first) : i]) if i + len(tok) == len(s) else None
    return None


def _expand_pm(items: list[str]) -> list[str]:
    out = []
    for item in items:
        if item.count("\\pm") == 1:
            out += [item.replace("\\pm", "+"), item.replace("\\pm", "-")]
        else:
            out.append(item)
    return out


def _names(items: list[str]) -> list[tuple[str, str]] | None:
    """[(name, value)] when every item is `name = value` with distinct names, else None."""
    named = [_NAME.match(x) for x in items]
    if not all(named):
        return None
    pairs = [(m.group(1).replace(" ", ""), m.group("value").strip()) for m in named]
    return pairs if len({n for n, _ in pairs}) == len(pairs) else None


def _shape(s: str) -> tuple[str, list[str]]:
    """("list", items) for a bare list, ("tuple", items) for `(a, b, ...)`, ("group" + brackets, [s]) for
    any other bracketed object, ("one", [s]) otherwise."""
    s = _LEFT_RIGHT.sub("", s).strip()
    group = _group(s)
    if group is not None:
        open_, close, inside = group
        items = split_top_level(inside)
        if open_ == "(" and close == ")" and len(items) >= 2 and all(items):
            return "tuple", items
        return "group" + open_ + close, [s]
    items = split_top_level(s)
    if len(items) >= 2 and all(items):
        return "list", items
    return "one", [s]


def _pred_shape(pred: str) -> tuple[str, list[str]]:
    """The prediction's shape, after dropping a leading `(x, y) =` or `x =` that names the whole answer."""
    pred = _LEFT_RIGHT.sub("", pred).strip()
    parts = split_top_level(pred, "=")
    if len(parts) == 2 and parts[1] and not re.search(r"\d", parts[0]):
        if _shape(parts[0])[0] in ("tuple", "list") or re.fullmatch(r"[A-Za-z]\w*", parts[0]):
            pred = parts[1]
    kind, items = _shape(pred)
    if kind in ("group[]", "group\\{\\}"):  # a list written in brackets or braces
        inside = split_top_level(_group(pred)[2])
        if len(inside) >= 2:
            return "bracketed", inside
    return kind, items


def _ordered(gold: list[str], pred: list[str], compare: Compare) -> str:
    if len(gold) != len(pred):
        return "wrong"
    reasons = [compare(g, p) for g, p in zip(gold, pred)]
    if all(r == "correct" for r in reasons):
        return "correct"
    return "unparsable_reference" if "unparsable_reference" in reasons else "wrong"


def _multiset(gold: list[str], pred: list[str], compare: Compare) -> str:
    """A perfect matching of gold items to equal pred items (Kuhn's augmenting paths, lazy comparisons)."""
    if len(gold) != len(pred):
        return "wrong"
    if len(gold) > MAX_MATCHED_ITEMS:
        return _ordered(gold, pred, compare)
    cache: dict[tuple[int, int], str] = {}

    def equal(i: int, j: int) -> bool:
        if (i, j) not in cache:
            cache[i, j] = compare(gold[i], pred[j])
        return cache[i, j] == "correct"

    owner: list[int | None] = [None] * len(pred)  # pred item j -> the gold item it is matched to

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(len(pred)):
            if j not in seen and equal(i, j):
                seen.add(j)
                if owner[j] is None or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(gold)):
        if not augment(i, set()):
            return "unparsable_reference" if "unparsable_reference" in cache.values() else "wrong"
    return "correct"


def _values(items: list[str]) -> list[str]:
    names = _names(items)
    return [v for _, v in names] if names is not None else items


def compare_structured(gold: str, pred: str, compare: Compare) -> str | None:
    """The verdict for golds or predictions with several items (see the module doc), or None when both are
    single answers, or the gold is an interval, a set or another bracketed object, and the caller should
    compare them whole. `gold` and `pred` are normalised answers."""
    g_kind, g_items = _shape(gold)
    if g_kind.startswith("group"):
        return None  # intervals, unions, explicit sets: math-verify knows their semantics
    p_kind, p_items = _pred_shape(pred)
    if g_kind == "one":
        g_items = _expand_pm(g_items)
        if len(g_items) == 1:
            return "wrong" if p_kind == "list" else None  # `[a, b]` may be an interval: math-verify decides
        g_kind = "list"  # `a \pm b`: the two items a + b and a - b
    if p_kind not in ("list", "tuple", "bracketed"):
        p_items = [pred]
    g_names, p_names = _names(g_items), _names(p_items)
    if g_names is not None and p_names is not None:  # both name every item: pair by name
        g_map, p_map = dict(g_names), dict(p_names)
        if set(g_map) != set(p_map):
            return "wrong"
        return _ordered([g_map[k] for k in g_map], [p_map[k] for k in g_map], compare)
    if g_kind == "tuple" or g_names is not None:  # ordered, with or without the parentheses
        if p_kind not in ("tuple", "list"):
            return "wrong"
        return _ordered(_values(g_items), _values(p_items), compare)
    return _multiset(_expand_pm(_values(g_items)), _expand_pm(_values(p_items)), compare)
