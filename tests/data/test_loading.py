import json
import re
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
         "row 1: field 'answer' is missing or null"),
        ([{"question": "a", "answer": "no marker"}], "gsm8k",
         "row 0: field 'answer' lacks a '#### answer' line"),
        ([{"problem": "a", "solution": "no box"}], "minerva", "row 0: field 'solution' lacks a complete"),
        ([{"problem": "a", "solution": "\\boxed{1"}], "minerva", "row 0: field 'solution' lacks a complete"),
        ([{"problem": " ", "answer": "1"}], "math", "row 0: field 'problem' is empty"),
        ([{"problem": "a", "answer": "1"}, {"problem": ["x"], "answer": "1"}], "math",
         "row 1: field 'problem' is list"),
        ([{"problem": "a", "answer": True}], "math", "row 0: field 'answer' is bool"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, rows, preset, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="bad.jsonl: " + message.replace("(", r"\(")):
        load_examples(path, preset=preset)


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
