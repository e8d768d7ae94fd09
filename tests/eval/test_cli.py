"""`codistill eval` end to end: a tiny random Qwen2 checkpoint, an offline character tokenizer, the
real embedded engine and verifier pool, 20 problems of GSM8K and Minerva, and handmade files in the
AIME, AMC and OlympiadBench layouts plus one with field names of its own. The pipeline is checked
(records, golds, summaries, resume), not the score."""

import json
import shutil
import string
from pathlib import Path

import pytest

from megatron_codistill.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found under {DATA}")


def save_tiny_model(path: Path) -> None:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(path))


def run(model: Path, out: Path, *extra: str, benchmarks: tuple = ("--benchmarks", "gsm8k,minerva")) -> int:
    return main([
        "eval", "--model", str(model), *benchmarks, "--data-dir", str(DATA),
        "--limit", "10", "--max-new-tokens", "6", "--out", str(out), "--reward-workers", "1",
        "--batch-size", "16", *extra,
    ])


SAMPLED = ("--n", "2", "--temperature", "1.0")


def lines(out: Path, name: str | None = None) -> list[str]:
    names = [name] if name else ["gsm8k", "minerva"]
    return [x for n in names for x in (out / n / "samples.jsonl").read_text().splitlines()]


def key(r: dict) -> tuple:
    return (r["benchmark"], r["problem"], r["mode"], r["sample"])


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """A tiny HF checkpoint and one evaluation of it (20 problems, greedy + 2 samples each)."""
    root = tmp_path_factory.mktemp("hf_run")
    save_tiny_model(root / "model")
    assert run(root / "model", root / "eval", *SAMPLED) == 0
    return root


def test_eval_end_to_end_and_resume(hf_run, tmp_path, capsys):
    model, first = hf_run / "model", hf_run / "eval"
    records = [json.loads(x) for x in lines(first)]
    assert len(records) == len({key(r) for r in records}) == 2 * 10 * (1 + 2)
    for r in records:
        assert r["score"] in (0.0, 1.0) and isinstance(r["reason"], str)
        assert 1 <= r["response_tokens"] <= 6 and r["finish_reason"] in ("stop", "length")
    summaries = json.loads((first / "summary.json").read_text())
    assert [(s["benchmark"], s["problems"]) for s in summaries] == [("gsm8k", 10), ("minerva", 10)]
    for s in summaries:
        greedy = [r["score"] for r in records if r["benchmark"] == s["benchmark"] and r["mode"] == "greedy"]
        assert s["greedy"] == sum(greedy) / 10
        assert set(s) >= {"pass@1", "pass@2", "maj@2"}
    table = (first / "summary.md").read_text()
    assert "| gsm8k | 10 |" in table and "| minerva | 10 |" in table

    # an interrupted copy: 25 GSM8K records and half of the next line, no Minerva; the rerun completes it
    out = tmp_path / "eval"
    shutil.copytree(first, out)
    kept = lines(first, "gsm8k")[:25]
    (out / "gsm8k" / "samples.jsonl").write_text("\n".join(kept) + "\n" + lines(first, "gsm8k")[25][:30])
    shutil.rmtree(out / "minerva")
    capsys.readouterr()
    assert run(model, out, *SAMPLED) == 0
    assert (out / "summary.md").read_text() in capsys.readouterr().out
    resumed = [json.loads(x) for x in lines(out)]
    assert [json.dumps(r) for r in resumed[:25]] == [json.dumps(json.loads(x)) for x in kept]
    assert len(resumed) == len({key(r) for r in resumed}) == len(records)
    greedy_before = {key(r): r["response"] for r in records if r["mode"] == "greedy"}
    assert {key(r): r["response"] for r in resumed if r["mode"] == "greedy"} == greedy_before


LAYOUT_ROWS = {
    "aime24": [{"id": 60, "problem": "Find $x$.", "solution": "So $x = 204$.", "answer": "204", "url": "u",
                "year": "2024"},
               {"id": 61, "problem": "Find $y$.", "solution": "So $y = 25$.", "answer": "025", "url": "u",
                "year": "2024"}],
    "amc23": [{"id": 0, "question": "How many?", "answer": 27.0, "url": "u"}],
    "olympiadbench": [{"id": 1606, "question": "Find all pairs.", "solution": ["Hence."],
                       "final_answer": ["$(2,2)$", "$(3,4)$"], "context": None, "is_multiple_answer": True,
                       "unit": None, "answer_type": "Tuple", "error": None, "subfield": "Number Theory",
                       "subject": "Math", "language": "English", "modality": "Text-only"}],
    "mine": [{"q": "Half of one?", "final": "\\frac{1}{2}"}],
}


def test_eval_on_benchmark_files_in_published_layouts_and_a_custom_one(hf_run, tmp_path, capsys):
    specs = []
    for name, rows in LAYOUT_ROWS.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        specs += ["--benchmark", f"{name}={path}" + (":q:final" if name == "mine" else "")]
    out = tmp_path / "eval"
    capsys.readouterr()
    assert run(hf_run / "model", out, benchmarks=tuple(specs)) == 0
    printed = capsys.readouterr().out
    golds = {name: [json.loads(x)["reference"] for x in lines(out, name)] for name in LAYOUT_ROWS}
    assert golds == {"aime24": ["204", "025"], "amc23": ["27"], "olympiadbench": ["(2,2), (3,4)"],
                     "mine": ["\\frac{1}{2}"]}
    summaries = json.loads((out / "summary.json").read_text())
    assert [(s["benchmark"], s["problems"]) for s in summaries] == [
        ("aime24", 2), ("amc23", 1), ("olympiadbench", 1), ("mine", 1)]
    for name in LAYOUT_ROWS:
        assert all(json.loads(x)["benchmark"] == name for x in lines(out, name))
        assert f"| {name} |" in printed
    # a custom file read with the wrong fields stops before the model loads, naming file, line and field
    assert run(hf_run / "model", tmp_path / "bad", benchmarks=("--benchmark", f"mine={tmp_path}/mine.jsonl")) == 2
    assert "benchmark 'mine': " in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # Megatron-Core import and two conversions: ~30 s on 2 busy cores
def test_megatron_checkpoint_evaluates_like_its_hf_source(hf_run, tmp_path):
    from megatron_codistill.convert.hf_to_mcore import convert_hf_to_mcore

    mcore = tmp_path / "mcore"
    convert_hf_to_mcore(str(hf_run / "model"), str(mcore))
    assert run(mcore, tmp_path / "eval") == 0  # greedy only
    assert (tmp_path / "eval" / "hf_model" / "model.safetensors").is_file()  # converted once, kept
    greedy = lambda out: {key(r): r["response"] for r in map(json.loads, lines(out)) if r["mode"] == "greedy"}  # noqa: E731
    assert greedy(tmp_path / "eval") == greedy(hf_run / "eval")


def test_megatron_checkpoint_detection(tmp_path):
    from megatron_codistill.eval.cli import MARKER, is_megatron_checkpoint

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert not is_megatron_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / MARKER).write_text(json.dumps({"format": "hf-safetensors"}))
    assert not is_megatron_checkpoint(tmp_path / "hf")
    (tmp_path / "mc").mkdir()
    (tmp_path / "mc" / MARKER).write_text(json.dumps({"format": "mcore-torch-dist"}))
    assert is_megatron_checkpoint(tmp_path / "mc")
