"""Field presets: which columns of a dataset row hold the problem, the final answer and the solution.

| preset  | question  | answer                                             | solution   |
|---------|-----------|----------------------------------------------------|------------|
| gsm8k   | question  | text after the last `####` of `answer`             | `answer`   |
| math    | problem   | `answer` if the row has one, else last box of `solution` | `solution` |
| minerva | problem   | last `\\boxed{}` of `solution`                     | `solution` |
| arith   | prompt    | `answer`                                           | `solution` |

`prompt_field` / `answer_field` rename the question / answer column of a preset; the way the answer is
read from its column (verbatim, after `####`, last box) stays the preset's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_codistill.rewards.extract import gsm8k_answer, last_boxed


@dataclass(frozen=True)
class Example:
    """One problem, as read from a dataset row."""

    question: str
    answer: str
    """The final answer the reward checks against."""
    solution: str | None
    """A worked solution, when the dataset has one."""
    index: int
    """Row index in the source (0-based)."""


@dataclass(frozen=True)
class FieldPreset:
    name: str
    question_field: str
    answer_field: str | None
    """Column holding the answer; None: read it from the solution."""
    solution_field: str | None
    answer_rule: str = "verbatim"
    """"verbatim", "gsm8k" (after `####`) or "boxed" (last `\\boxed{}`)."""
    answer_fallback_to_solution: bool = False
    """MATH: a row without an answer column falls back to the last box of its solution."""


PRESETS: dict[str, FieldPreset] = {
    p.name: p
    for p in (
        FieldPreset("gsm8k", "question", "answer", "answer", answer_rule="gsm8k"),
        FieldPreset("math", "problem", "answer", "solution", answer_fallback_to_solution=True),
        FieldPreset("minerva", "problem", None, "solution", answer_rule="boxed"),
        FieldPreset("arith", "prompt", "answer", "solution"),
    )
}


def get_preset(name: str, *, prompt_field: str | None = None, answer_field: str | None = None) -> FieldPreset:
    """A preset by name, with optional column renames; ValueError listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown field preset {name!r}; valid presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if prompt_field:
        preset = replace(preset, question_field=prompt_field)
    if answer_field:
        preset = replace(preset, answer_field=answer_field, answer_fallback_to_solution=False)
    return preset


def _text(row: dict, field: str, where: str, *, required: bool = True) -> str | None:
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        if value is None and not required:
            return None
        shown = "missing or null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        raise ValueError(f"{where}: field {field!r} is {shown}; expected text (columns: {sorted(row)})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # arrow turns a column of 1 and 0.5 into floats: show 1, not 1.0
    text = str(value).strip()
    if not text and required:
        raise ValueError(f"{where}: field {field!r} is empty")
    return text or None


def _read_answer(text: str, rule: str, where: str, field: str) -> str:
    found = {"verbatim": lambda t: t, "gsm8k": gsm8k_answer, "boxed": last_boxed}[rule](text)
    if not found:
        marker = {"gsm8k": "a '#### answer' line", "boxed": "a complete \\boxed{...}"}[rule]
        raise ValueError(f"{where}: field {field!r} lacks {marker}: {text[-80:]!r}")
    return found


def to_example(row: dict, index: int, preset: FieldPreset, source: str) -> Example:
    """The Example of one row; ValueError naming `source`, the row and the field when it is malformed."""
    where = f"{source}: row {index}"
    question = _text(row, preset.question_field, where)
    solution = _text(row, preset.solution_field, where, required=False) if preset.solution_field else None
    if preset.answer_field is not None and (
        not preset.answer_fallback_to_solution or row.get(preset.answer_field) not in (None, "")
    ):
        raw = _text(row, preset.answer_field, where)
        answer = _read_answer(raw, preset.answer_rule, where, preset.answer_field)
    else:
        field = preset.solution_field or "solution"
        raw = _text(row, field, where)
        answer = _read_answer(raw, "boxed", where, field)
    return Example(question=question, answer=answer, solution=solution, index=index)
