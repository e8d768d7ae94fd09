"""Every data and eval file is read and checked when the run is built: a bad row or a malformed line
stops `codistill train` before the warm start, with the file, the line and the field named."""

import json

import pytest

from megatron_codistill.config import load_config
from megatron_codistill.trainer import train as train_module
from megatron_codistill.trainer.prompts import PromptStream
from megatron_codistill.trainer.train import train_main
from tests.trainer.conftest import TINY

ROWS = [{"prompt": "137+582=", "answer": "0719"}, {"prompt": "867+821=", "answer": "1688"}]


@pytest.fixture
def no_warm_start(monkeypatch):
    """Fail the test if the warm start begins (it is the first compute after the run is built)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the warm start began: the input error came too late")

    monkeypatch.setattr(train_module, "warm_start", refuse)


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_a_bad_eval_row_stops_train_before_the_warm_start(tiny_overrides, tmp_path, no_warm_start):
    bad = write(tmp_path / "heldout.jsonl", [ROWS[0], {"prompt": "867+821="}])
    overrides = [*tiny_overrides, f"data.eval=[{{name: heldout, path: {bad}, preset: arith}}]"]
    with pytest.raises(ValueError) as e:
        train_main(str(TINY), overrides)
    assert str(e.value).startswith(f"data.eval[0] ('heldout'): {bad}:2 (row 1): field 'answer' is missing or null")
    assert not list((tmp_path / "run").glob("**/*.pt"))  # nothing was trained or saved


def test_a_malformed_jsonl_line_is_one_line_naming_file_and_line(tiny_overrides, tmp_path, no_warm_start):
    bad = write(tmp_path / "train.jsonl", [ROWS[0], ROWS[1], '{"prompt": "1+1=", "answer": "02"'])
    with pytest.raises(ValueError) as e:
        train_main(str(TINY), [*tiny_overrides, f"data.train={bad}"])
    assert str(e.value) == (f"{bad}:3: not valid JSON (Expecting ',' delimiter at column 34): "
                            "'{\"prompt\": \"1+1=\", \"answer\": \"02\"'")


def test_an_eval_file_with_a_missing_line_ending_and_blank_lines_names_the_right_line(tiny_overrides, tmp_path,
                                                                                       no_warm_start):
    bad = tmp_path / "heldout.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"prompt": "", "answer": "1"}))
    overrides = [*tiny_overrides, f"data.eval=[{{name: heldout, path: {bad}, preset: arith}}]"]
    with pytest.raises(ValueError, match=r"heldout.jsonl:3 \(row 1\): field 'prompt' is empty"):
        train_main(str(TINY), overrides)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY.parent / "tokenizer"))


def test_eval_sets_are_loaded_when_the_stream_is_built_with_their_own_fields(tiny_overrides, tmp_path):
    own = write(tmp_path / "own.jsonl", [{"q": r["prompt"], "a": r["answer"]} for r in ROWS])
    sets = (f"[{{name: plain, path: {TINY.parent / 'data/test.jsonl'}, preset: arith, limit: 3}}, "
            f"{{name: own, path: {own}, preset: arith, prompt_field: q, answer_field: a}}]")
    cfg = load_config(TINY, [*tiny_overrides, f"data.eval={sets}"])
    stream = PromptStream(cfg, tokenizer(), rank=0, world_size=1)
    own.unlink()  # already read: the first evaluation does not read it again
    got = {e.name: [(p.prompt, p.reference) for p in stream.eval_problems(e)] for e in cfg.data.eval}
    assert got["own"] == [("137+582=", "0719"), ("867+821=", "1688")]
    assert len(got["plain"]) == 3

    # without its fields the same file is read with the preset's (prompt / answer): an error naming both
    write(own, [{"q": "1+1=", "a": "02"}])
    cfg = load_config(TINY, [*tiny_overrides, f"data.eval=[{{name: own, path: {own}, preset: arith}}]"])
    with pytest.raises(ValueError, match=r"data.eval\[0\] \('own'\): .*own.jsonl:1 \(row 0\): field 'prompt' is"):
        PromptStream(cfg, tokenizer(), rank=0, world_size=1)


def test_eval_set_names_must_differ(tiny_overrides):
    path = TINY.parent / "data/test.jsonl"
    sets = f"[{{name: a, path: {path}, preset: arith}}, {{name: a, path: {path}, preset: arith}}]"
    cfg = load_config(TINY, [*tiny_overrides, f"data.eval={sets}"])
    with pytest.raises(ValueError, match=r"data.eval: set name\(s\) \['a'\] used twice"):
        PromptStream(cfg, tokenizer(), rank=0, world_size=1)
