import json
import re
import traceback
from pathlib import Path

import pytest

from megatron_codistill.data import PRESETS, load_examples

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found under {DATA}")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def raw(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


@needs_data
def test_benchmark_presets_read_the_gold_answers(tmp_path):
    gsm = load_examples(str(DATA / "gsm8k/test.jsonl"), preset="gsm8k")
    assert len(gsm) == 1319
    assert [e.answer for e in gsm] == [r["answer"].split("####")[-1].strip() for r in raw("gsm8k/test.jsonl")]
    assert gsm[0].question.startswith("Janet") and gsm[0].solution.endswith("#### 18")

    math = load_examples(str(DATA / "math500/test.jsonl"), preset="math")
    rows = raw("math500/test.jsonl")
    assert [e.answer for e in math] == [r["answer"] for r in rows]
    # without the answer column the preset falls back to the last box of the solution (equal in MATH-500)
    stripped = [{k: v for k, v in r.items() if k != "answer"} for r in rows]
    no_answer = write_jsonl(tmp_path / "m.jsonl", stripped)
    assert [e.answer for e in load_examples(no_answer, preset="math")] == [r["answer"] for r in rows]

    minerva = load_examples(str(DATA / "minerva_math/test.jsonl"), preset="minerva", limit=3)
    assert [e.answer for e in minerva] == ["1.6", "4.5e33", "41.8"]
    assert [e.index for e in minerva] == [0, 1, 2]


def test_local_formats_agree(tmp_path):
    import datasets

    rows = [{"problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(5)]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    paths = (jsonl, str(tmp_path / "d.json"), str(tmp_path / "d.parquet"))
    loaded = [load_examples(p, preset="math") for p in paths]
    assert loaded[0] == loaded[1] == loaded[2]
    assert [e.answer for e in loaded[0]] == ["0", "2", "4", "6", "8"]
    assert load_examples(jsonl, preset="math", limit=2)[-1].question == "What is 1+1?"


def test_numbers_and_field_overrides(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "one?", "final": 1}, {"q": "half?", "final": 0.5}])
    got = load_examples(path, preset="math", prompt_field="q", answer_field="final")
    assert [(e.question, e.answer, e.solution) for e in got] == [("one?", "1", None), ("half?", "0.5", None)]


@pytest.mark.parametrize(
    "rows, preset, message",
    [
        ([{"question": "a", "answer": "x\n#### 1"}, {"question": "b"}], "gsm8k",
         "2 (row 1): field 'answer' is missing or null"),
        ([{"question": "a", "answer": "no marker"}], "gsm8k",
         "1 (row 0): field 'answer' lacks a '#### answer' line"),
        ([{"problem": "a", "solution": "no box"}], "minerva", "1 (row 0): field 'solution' lacks a complete"),
        ([{"problem": "a", "solution": "\\boxed{1"}], "minerva", "1 (row 0): field 'solution' lacks a complete"),
        ([{"problem": " ", "answer": "1"}], "math", "1 (row 0): field 'problem' is empty"),
        ([{"problem": "a", "answer": "1"}, {"problem": ["x"], "answer": "1"}], "math",
         "2 (row 1): field 'problem' is list"),
        ([{"problem": "a", "answer": True}], "math", "1 (row 0): field 'answer' is bool"),
        ([{"question": "a", "final_answer": []}], "olympiadbench", "1 (row 0): field 'final_answer' is list"),
    ],
)
def test_bad_row_names_file_line_row_and_field(tmp_path, rows, preset, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="bad.jsonl:" + message.replace("(", r"\(").replace(")", r"\)")):
        load_examples(path, preset=preset)


def test_parquet_rows_are_named_by_index(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"problem": "a", "answer": "1"}, {"problem": "", "answer": "2"}]).to_parquet(
        str(tmp_path / "d.parquet"))
    with pytest.raises(ValueError, match=r"d.parquet: row 1: field 'problem' is empty"):
        load_examples(str(tmp_path / "d.parquet"), preset="math")


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": 2', ""],
         r"bad.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 29\)"),
        (['{"problem": "a", "answer": "1"}', "", '["problem", "b"]'],
         r"bad.jsonl:3: a JSON list; expected an object of named fields"),
    ],
)
def test_malformed_jsonl_line_is_one_line_naming_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as e:
        load_examples(str(path), preset="math")
    assert "\n" not in str(e.value)
    chain = "".join(traceback.format_exception(e.value))
    assert "During handling" not in chain and "direct cause" not in chain  # no chained library traceback


def test_blank_lines_keep_line_numbers_right(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n\n{"problem": "b"}\n')
    with pytest.raises(ValueError, match=r"gaps.jsonl:4 \(row 1\): field 'solution' is missing"):
        load_examples(str(path), preset="math")  # no answer column: falls back to the solution's box


# Rows in the published layouts (field names and types as the hub datasets have them; the content is made up)
AIME_H4 = {"id": 60, "problem": "Find $x$.", "solution": "So $x = 204$.", "answer": "204", "url": "u", "year": "2024"}
AIME_MJ = {"ID": "2024-I-1", "Problem": "Find $y$.", "Solution": "So $y=25$.", "Answer": 25}
AMC_MATHAI = {"id": 0, "question": "How many?", "answer": 27.0, "url": "u"}
AMC_AIMO = {"id": 1, "problem": "How far?", "answer": 3.5, "url": "u"}
OLYMPIAD = {
    "id": 1606, "question": "Find all pairs $(a, b)$.", "solution": ["First, ...", "Hence $a=b=2$."],
    "final_answer": ["$(2,2)$", "$(3,4)$"], "context": None, "image_1": None, "modality": "Text-only",
    "difficulty": "Competition", "is_multiple_answer": True, "unit": None, "answer_type": "Tuple",
    "error": None, "question_type": "Open-ended", "subfield": "Number Theory", "subject": "Math",
    "language": "English",
}
OLYMPIAD_PHYSICS = {**OLYMPIAD, "id": 7, "question": "Find the speed.", "context": "A ball falls.",
                    "final_answer": ["$3 \\times 10^{8}$"], "solution": ["v = c"], "is_multiple_answer": False,
                    "unit": "m/s", "answer_type": "Numerical", "error": "1e6"}


@pytest.mark.parametrize(
    "preset, rows, expected",
    [
        ("aime24", [AIME_H4], [("Find $x$.", "204", "So $x = 204$.")]),
        ("aime24", [AIME_MJ], [("Find $y$.", "25", "So $y=25$.")]),
        ("amc23", [AMC_MATHAI], [("How many?", "27", None)]),
        ("amc23", [AMC_AIMO], [("How far?", "3.5", None)]),
        ("olympiadbench", [OLYMPIAD, OLYMPIAD_PHYSICS], [
            ("Find all pairs $(a, b)$.", "(2,2), (3,4)", "First, ...\n\nHence $a=b=2$."),
            ("A ball falls.\n\nFind the speed.", "3 \\times 10^{8}", "v = c"),
        ]),
    ],
)
def test_benchmark_presets_read_their_published_layouts(tmp_path, preset, rows, expected):
    for suffix in (".jsonl", ".parquet"):
        path = tmp_path / f"{preset}{suffix}"
        if suffix == ".jsonl":
            write_jsonl(path, rows)
        else:
            import datasets

            datasets.Dataset.from_list(rows).to_parquet(str(path))
        got = load_examples(str(path), preset=preset)
        assert [(e.question, e.answer, e.solution) for e in got] == expected


def test_errors_for_paths_and_names(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl' is empty: no valid row"):
        load_examples(str(tmp_path / "empty.jsonl"), preset="math")
    with pytest.raises(ValueError, match="does not exist"):
        load_examples(str(tmp_path / "missing.jsonl"), preset="math")
    (tmp_path / "d.csv").write_text("a,b\n")
    suffixes = "suffix '.csv'; use one of ['.json', '.jsonl', '.parquet']"
    with pytest.raises(ValueError, match=re.escape(suffixes)):
        load_examples(str(tmp_path / "d.csv"), preset="math")
    valid = f"unknown field preset 'gsm'; valid presets: {sorted(PRESETS)}"
    with pytest.raises(ValueError, match=re.escape(valid)):
        load_examples(str(tmp_path / "d.csv"), preset="gsm")


def test_hub_names_go_to_datasets_with_the_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kw):
        calls.append((name, split, kw))
        return datasets.Dataset.from_list([{"question": "q", "answer": "w\n#### 7"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = load_examples("openai/gsm8k", preset="gsm8k", split="test")
    assert calls == [("openai/gsm8k", "test", {})]
    assert got[0].answer == "7"
