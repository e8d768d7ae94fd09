"""Rewrite answers that math-verify would misread, before parsing.

Known traps (each checked in tests/rewards/test_normalize.py):
- e-notation: `4.5e33` parses as 4.5 * e * 33 (Euler's e), so it never equals `4.5 \\times 10^{33}`;
  we write it as `4.5 \\times 10^{33}`.
- thousands separators: `70,000`, `1{,}000`, `1,\\!000`, `1\\,000` are one number, not a set.
- a dangling decimal point: `-1./3` parses as -1; we drop the point (`-1/3`).
- NumPy spellings such as `np.arcsin(x)` become `\\arcsin(x)`.
- dollar signs of currency and of math mode, `\\(..\\)`, a final period, a final percent sign
  (MATH golds say `20` where answers say `20\\%`; math-verify reads the latter as 0.2), also as
  `\\text{\\%}`, `\\mathrm{\\%}` or `\\text{ percent}`.
- LaTeX spacing (`\\ `, `\\,`, `\\;`, `\\:`, `~`, `\\quad`) is a plain space and `\\!` nothing, after the
  thousands separators are read: `4.2\\ \\%` is `4.2`, `5\\,\\text{cm}` is `5 \\text{cm}` (math-verify drops a
  trailing `\\text{...}` unit, as it does after a plain space).
`x = 5` against `5` is left to math-verify, which accepts an assignment whose right side matches.
"""

from __future__ import annotations

import re

_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+\.?\d*|\.\d+)[eE]([+-]?)0*(\d+)(?![\w.])")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_THOUSANDS = re.compile(r"(\d)(?:\{,\}|,\\!|\\,|\\!)(?=\d{3}(?!\d))")
_DANGLING_POINT = re.compile(r"(\d)\.(?![\d])")
_NUMPY = re.compile(r"\b(?:np|numpy|math)\.([a-z]+)\b")
_LATEX_SPACE = re.compile(r"\\\\|\\(?:q?quad(?![A-Za-z])|[ ,;:!])|~")  # `\\\\` (a matrix row break) is kept
_PERCENT = re.compile(r"\s*(?:\\%|%|\\(?:text|mathrm|textrm|mbox)\{\s*(?:\\?%|percent)\s*\}|percent)$")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    changed = True
    while changed:
        changed = False
        for left, right in _MATH_DELIMS:
            if len(s) > len(left) + len(right) - 1 and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
            changed = True
    return s


def e_notation_to_latex(s: str) -> str:
    """`4.5e33` -> `4.5 \\times 10^{33}`, `1e-5` -> `1 \\times 10^{-5}` (standalone numbers only)."""
    def latex(m: re.Match) -> str:
        sign = "-" if m.group(2) == "-" else ""
        return f"{m.group(1)} \\times 10^{{{sign}{m.group(3)}}}"

    return _E_NOTATION.sub(latex, s)


def _space(m: re.Match) -> str:
    return {"\\\\": "\\\\", "\\!": ""}.get(m.group(0), " ")  # a row break stays; a negative space goes


def normalize_answer(answer: str) -> str:
    """Apply every rewrite above to one extracted answer (a gold or a prediction)."""
    s = _strip_delimiters(answer)
    s = s.replace("\\$", "").replace("$", " ").strip()
    s = _LATEX_THOUSANDS.sub(r"\1", s)
    s = _LATEX_SPACE.sub(_space, s)
    s = _PERCENT.sub("", s.strip())
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _NUMPY.sub(r"\\\1", s)
    s = e_notation_to_latex(s)
    s = _DANGLING_POINT.sub(r"\1", s)
    return s.strip()
