"""Field presets: which columns of a dataset row hold the problem, the final answer and the solution.

| preset        | question                | answer                                   | solution             |
|---------------|-------------------------|------------------------------------------|----------------------|
| gsm8k         | question                | text after the last `####` of `answer`   | `answer`             |
| math, math500 | problem                 | `answer` if the row has one, else last box of `solution` | `solution` |
| minerva       | problem                 | last `\\boxed{}` of `solution`           | `solution`           |
| arith         | prompt                  | `answer`                                 | `solution`           |
| aime24        | problem / Problem       | answer / Answer                          | solution / Solution  |
| amc23         | question / problem      | answer                                   | solution             |
| olympiadbench | context + question      | final_answer (a list: joined with ", ")  | solution (a list)    |

The last three read the published layouts of HuggingFaceH4/aime_2024 and Maxwell-Jia/AIME_2024,
math-ai/amc23 and AI-MO/aimo-validation-amc, and Hothan/OlympiadBench (whose physics problems carry a
`context` paragraph, put before the question). Where several column names are listed, the first one a
row has is read. An answer column holding a list is joined with ", " (each item without its `$`
delimiters), which the reward then compares as a multiset of items.

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
    question_field: str | tuple[str, ...]
    """Column of the problem; a tuple lists alternative names, the first present in a row is read."""
    answer_field: str | tuple[str, ...] | None
    """Column holding the answer; None: read it from the solution."""
    solution_field: str | tuple[str, ...] | None
    answer_rule: str = "verbatim"
    """"verbatim", "gsm8k" (after `####`) or "boxed" (last `\\boxed{}`)."""
    answer_fallback_to_solution: bool = False
    """MATH: a row without an answer column falls back to the last box of its solution."""
    context_field: str | None = None
    """Column of a text put before the question when a row has one (OlympiadBench physics)."""


_MATH = dict(question_field="problem", answer_field="answer", solution_field="solution",
             answer_fallback_to_solution=True)
PRESETS: dict[str, FieldPreset] = {
    p.name: p
    for p in (
        FieldPreset("gsm8k", "question", "answer", "answer", answer_rule="gsm8k"),
        FieldPreset("math", **_MATH),
        FieldPreset("math500", **_MATH),
        FieldPreset("minerva", "problem", None, "solution", answer_rule="boxed"),
        FieldPreset("arith", "prompt", "answer", "solution"),
        FieldPreset("aime24", ("problem", "Problem"), ("answer", "Answer"), ("solution", "Solution")),
        FieldPreset("amc23", ("question", "problem"), "answer", "solution"),
        FieldPreset("olympiadbench", "question", "final_answer", "solution", context_field="context"),
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


def _column(row: dict, field: str | tuple[str, ...]) -> str:
    """The first of the alternative column names that the row has a value in (else the first name)."""
    names = (field,) if isinstance(field, str) else field
    return next((n for n in names if row.get(n) is not None), names[0])


def _item(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # arrow turns a column of 1 and 0.5 into floats: show 1, not 1.0
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text.strip("$").strip()
    return text


def _text(row: dict, field: str, where: str, *, required: bool = True, lists: str | None = None) -> str | None:
    """The column as text. lists="answer": a list of texts or numbers is joined with ", "; "solution": with
    blank lines; None: a list is an error."""
    value = row.get(field)
    if lists and isinstance(value, list | tuple):
        items = [_item(v) for v in value]
        if value and all(items):
            return ", ".join(items) if lists == "answer" else "\n\n".join(items)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        if value is None and not required:
            return None
        shown = "missing or null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        kind = "text or a list of texts" if lists else "text"
        raise ValueError(f"{where}: field {field!r} is {shown}; expected {kind} (columns: {sorted(row)})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
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


def to_example(row: dict, index: int, preset: FieldPreset, source: str, *, line: int | None = None) -> Example:
    """The Example of one row; ValueError naming `source`, the row (and its line in a JSONL file) and the field
    when it is malformed."""
    where = f"{source}:{line} (row {index})" if line is not None else f"{source}: row {index}"
    question = _text(row, _column(row, preset.question_field), where)
    if preset.context_field and (context := _text(row, preset.context_field, where, required=False)):
        question = f"{context}\n\n{question}"
    solution = None
    if preset.solution_field:
        solution = _text(row, _column(row, preset.solution_field), where, required=False, lists="solution")
    answer_field = _column(row, preset.answer_field) if preset.answer_field is not None else None
    if answer_field is not None and (
        not preset.answer_fallback_to_solution or row.get(answer_field) not in (None, "")
    ):
        raw = _text(row, answer_field, where, lists="answer")
        answer = _read_answer(raw, preset.answer_rule, where, answer_field)
    else:
        field = _column(row, preset.solution_field or "solution")
        raw = _text(row, field, where, lists="solution")
        answer = _read_answer(raw, "boxed", where, field)
    return Example(question=question, answer=answer, solution=solution, index=index)
