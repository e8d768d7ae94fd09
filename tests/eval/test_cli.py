"""`codistill eval` end to end: a tiny random Qwen2 checkpoint, an offline character tokenizer, the
real embedded engine and verifier pool, 20 problems of GSM8K and Minerva. The pipeline is checked
(records, summary, resume), not the score."""

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


def run(model: Path, out: Path, *extra: str) -> int:
    return main([
        "eval", "--model", str(model), "--benchmarks", "gsm8k,minerva", "--data-dir", str(DATA),
        "--limit", "10", "--max-new-tokens", "6", "--out", str(out), "--reward-workers", "1",
        "--batch-size", "16", *extra,
    ])


SAMPLED = ("--n", "2", "--temperature", "1.0")


def lines(out: Path) -> list[str]:
    return (out / "samples.jsonl").read_text().splitlines()


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

    # an interrupted copy: 25 records and half of the next line; the rerun completes it
    out = tmp_path / "eval"
    shutil.copytree(first, out)
    kept = lines(first)[:25]
    (out / "samples.jsonl").write_text("\n".join(kept) + "\n" + lines(first)[25][:30])
    capsys.readouterr()
    assert run(model, out, *SAMPLED) == 0
    assert (out / "summary.md").read_text() in capsys.readouterr().out
    resumed = [json.loads(x) for x in lines(out)]
    assert [json.dumps(r) for r in resumed[:25]] == [json.dumps(json.loads(x)) for x in kept]
    assert len(resumed) == len({key(r) for r in resumed}) == len(records)
    greedy_before = {key(r): r["response"] for r in records if r["mode"] == "greedy"}
    assert {key(r): r["response"] for r in resumed if r["mode"] == "greedy"} == greedy_before


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
