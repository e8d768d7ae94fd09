import json

import pytest

from megatron_codistill.data.char_tokenizer import build_char_tokenizer
from megatron_codistill.eval.harness import EvalSettings, evaluate
from megatron_codistill.rewards import VerifierPool
from tests.eval.scripted import ALPHABET, ScriptedEngine

QUESTIONS = ["what is 1+1?", "what is 2+2?", "what is 3+3?", "what is 4+4?"]
GOLD = ["2", "4", "6", "8"]
GREEDY = {q: a for q, a in zip(QUESTIONS, ["so \\boxed{2}", "so \\boxed{5}", "#### 6", "i am not sure"])}


def boxed(*answers):
    return [f"\\boxed{{{a}}}" if a is not None else "hmm" for a in answers]


SAMPLED = {
    QUESTIONS[0]: boxed(2, 3, 3, 3),  # 1 correct, majority 3: wrong
    QUESTIONS[1]: boxed(4, 4, 5, None),  # 2 correct, majority 4: right
    QUESTIONS[2]: boxed(1, 6, 1, 6),  # 2 correct, tie 1 vs 6: the first seen (1) wins: wrong
    QUESTIONS[3]: boxed(9, 9, 9, 9),  # none correct
}


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2, timeout_s=5.0) as p:
        yield p


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data" / "gsm8k"
    d.mkdir(parents=True)
    rows = [{"question": q, "answer": f"because\n#### {a}"} for q, a in zip(QUESTIONS, GOLD)]
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "data"


def settings(data_dir, out, **kw):
    base = dict(benchmarks=["gsm8k"], data_dir=str(data_dir), out_dir=str(out), n=4, temperature=1.0,
                batch_size=2, model="scripted")
    return EvalSettings(**{**base, **kw})


def records(out, name="gsm8k"):
    return [json.loads(line) for line in (out / name / "samples.jsonl").read_text().splitlines()]


def test_metrics_by_hand(tok, pool, data_dir, tmp_path):
    engine = ScriptedEngine(tok, GREEDY, SAMPLED, truncated=[QUESTIONS[3]])
    [summary] = evaluate(engine, tok, settings(data_dir, tmp_path / "out"), pool=pool)
    assert summary["problems"] == 4
    assert summary["greedy"] == pytest.approx(2 / 4)
    assert summary["pass@1"] == pytest.approx((1 + 2 + 2 + 0) / 16)
    assert summary["pass@2"] == pytest.approx((1 - 3 / 6 + 2 * (1 - 1 / 6) + 0) / 4)  # 1 - C(4-c,2)/C(4,2)
    assert summary["pass@4"] == pytest.approx(3 / 4)
    assert summary["maj@4"] == pytest.approx(1 / 4)
    assert summary["truncated"] == pytest.approx(1 / 20)
    rs = records(tmp_path / "out")
    assert len(rs) == 4 + 16
    assert {(r["mode"], r["sample"]) for r in rs if r["problem"] == 1} == {("greedy", 0)} | {
        ("sampled", s) for s in range(4)
    }
    r = next(r for r in rs if r["mode"] == "greedy" and r["problem"] == 2)
    assert (r["response"], r["extracted"], r["score"], r["reason"]) == ("#### 6", "6", 1.0, "correct")
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "| benchmark | problems | greedy | pass@1 | pass@2 | pass@4 | maj@4 |" in table
    assert "| gsm8k | 4 | 50.00 | 31.25 | 54.17 | 75.00 | 25.00 |" in table
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == [summary]
    assert json.loads((tmp_path / "out" / "gsm8k" / "summary.json").read_text()) == summary


def test_interrupted_evaluation_resumes(tok, pool, data_dir, tmp_path):
    full = tmp_path / "full"
    evaluate(ScriptedEngine(tok, GREEDY, SAMPLED), tok, settings(data_dir, full), pool=pool)

    out = tmp_path / "resumed"
    first = ScriptedEngine(tok, GREEDY, SAMPLED, fail_after=1)  # stops in the second chunk
    with pytest.raises(KeyboardInterrupt):
        evaluate(first, tok, settings(data_dir, out), pool=pool)
    assert len(records(out)) == 2  # the first chunk (2 problems, greedy) was written
    with open(out / "gsm8k" / "samples.jsonl", "a") as f:
        f.write('{"benchmark": "gsm8k", "prob')  # a line cut by the interruption

    second = ScriptedEngine(tok, GREEDY, SAMPLED)
    summary = evaluate(second, tok, settings(data_dir, out), pool=pool)
    expected_calls = [(q, 1) for q in QUESTIONS[2:]] + [(q, 4) for q in QUESTIONS]
    assert [(q, n) for q, n, _ in second.calls] == expected_calls
    key = lambda r: (r["problem"], r["mode"], r["sample"])  # noqa: E731
    assert sorted(records(out), key=key) == sorted(records(full), key=key)
    assert summary == json.loads((full / "summary.json").read_text())

    third = ScriptedEngine(tok, GREEDY, SAMPLED)  # nothing left to do
    evaluate(third, tok, settings(data_dir, out), pool=pool)
    assert third.calls == []
    with pytest.raises(ValueError, match=r"other settings \{'temperature': \(1.0, 0.7\)\}"):
        evaluate(third, tok, settings(data_dir, out, temperature=0.7), pool=pool)


def test_settings_and_missing_files(data_dir, tmp_path, tok, pool):
    with pytest.raises(ValueError, match="n = 4 samples need temperature > 0"):
        settings(data_dir, tmp_path, temperature=0.0)
    with pytest.raises(ValueError, match=r"unknown benchmark 'aime'; presets: \['aime24', 'amc23', 'gsm8k'"):
        settings(data_dir, tmp_path, benchmarks=["gsm8k", "aime"])
    with pytest.raises(ValueError, match=r"benchmark name\(s\) \['gsm8k'\] given twice"):
        settings(data_dir, tmp_path, benchmarks=["gsm8k", f"gsm8k={data_dir}/gsm8k/test.jsonl"])
    with pytest.raises(ValueError, match="give both fields, mine=PATH:problem_field:answer_field"):
        settings(data_dir, tmp_path, benchmarks=["mine=x.jsonl:q"])
    engine = ScriptedEngine(tok, GREEDY, SAMPLED)
    with pytest.raises(ValueError, match="benchmark 'math500': .*math500/test.jsonl not found"):
        evaluate(engine, tok, settings(data_dir, tmp_path / "o", benchmarks=["gsm8k", "math500"]), pool=pool)
    # a bad row in any benchmark stops the evaluation before the first generation
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "what is 1+1?", "a": "2"}\n{"q": "what is 2+2?"}\n')
    with pytest.raises(ValueError, match=r"benchmark 'mine': .*bad.jsonl:2 \(row 1\): field 'a' is missing"):
        evaluate(engine, tok, settings(data_dir, tmp_path / "o2", benchmarks=["gsm8k", f"mine={bad}:q:a"]), pool=pool)
    assert engine.generate_calls == 0 and not (tmp_path / "o2").exists()


# Handmade files in the published layouts of AIME 2024, AMC 2023 and OlympiadBench, and a file with field
# names of its own; the scripted engine answers each question in another spelling of its gold.
LAYOUTS = {
    "aime24": [{"id": 60, "problem": "what is 1+1?", "solution": "it is 2", "answer": "002", "url": "u",
                "year": "2024"}],
    "amc23": [{"id": 0, "question": "what is 2+2?", "answer": 4.0, "url": "u"}],
    "olympiadbench": [
        {"id": 1, "question": "what is 3+3?", "final_answer": ["$(2,2)$", "$(3,4)$"], "solution": ["a", "b"],
         "context": None, "is_multiple_answer": True, "unit": None, "answer_type": "Tuple", "error": None},
        {"id": 2, "question": "what is 4+4?", "final_answer": ["$x^2-1$"], "solution": ["c"],
         "context": "the setting.", "is_multiple_answer": False, "unit": None, "answer_type": "Expression",
         "error": None},
    ],
    "mine": [{"q": "what is 5+5?", "final": "\\frac{1}{2}"}],
}
ANSWERS = {"what is 1+1?": "\\boxed{2}", "what is 2+2?": "#### 4", "what is 3+3?": "\\boxed{(3, 4), (2, 2)}",
           "the setting.": "\\boxed{(x-1)(x+1)}", "what is 5+5?": "\\boxed{0.5}"}


def test_benchmarks_in_published_layouts_and_a_custom_file(tok, pool, tmp_path):
    specs = []
    for name, rows in LAYOUTS.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        specs.append(f"{name}={path}" + (":q:final" if name == "mine" else ""))
    out = tmp_path / "out"
    engine = ScriptedEngine(tok, ANSWERS, {})
    summaries = evaluate(engine, tok, settings(tmp_path, out, benchmarks=specs, n=1), pool=pool)
    assert [(s["benchmark"], s["problems"], s["greedy"]) for s in summaries] == [
        ("aime24", 1, 1.0), ("amc23", 1, 1.0), ("olympiadbench", 2, 1.0), ("mine", 1, 1.0)]
    golds = {name: [r["reference"] for r in records(out, name)] for name in LAYOUTS}
    assert golds == {"aime24": ["002"], "amc23": ["4"], "olympiadbench": ["(2,2), (3,4)", "x^2-1"],
                     "mine": ["\\frac{1}{2}"]}
    for name in LAYOUTS:  # outputs carry each benchmark's own name
        assert json.loads((out / name / "summary.json").read_text())["benchmark"] == name
    table = (out / "summary.md").read_text()
    assert all(f"| {name} |" in table for name in LAYOUTS)


def test_majority_vote_groups_equivalent_answers(tok, pool, data_dir, tmp_path):
    """maj@5 by hand: equivalent spellings vote together, the correct ones and the wrong ones alike."""
    votes = {
        QUESTIONS[0]: boxed("2", "3", "2.0", "3", "\\frac{4}{2}"),  # 2 three times vs 3 twice: right
        QUESTIONS[1]: boxed("5", "4", "5.0", "4", "\\frac{10}{2}"),  # 5 three times vs 4 twice: wrong
        QUESTIONS[2]: boxed("6", "1", "1", "6.0", None),  # a tie, 6 seen first: right
        QUESTIONS[3]: boxed(None, None, None, None, None),  # no answer: wrong
    }
    engine = ScriptedEngine(tok, GREEDY, votes)
    [summary] = evaluate(engine, tok, settings(data_dir, tmp_path / "out", n=5), pool=pool)
    assert summary["maj@5"] == pytest.approx(2 / 4)  # by text: 3 wins 1, 4 wins 2, tie 6 vs 1 -> 1 of 4
