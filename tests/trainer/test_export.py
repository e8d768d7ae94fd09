"""`codistill export`: any complete training checkpoint to Hugging Face with each model's own tokenizer,
config and token ids; a TP=2 checkpoint exports to the same bytes as a TP=1 one. Tokenizers of the two
models are checked before any compute."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_codistill.data.arith import ALPHABET
from megatron_codistill.data.char_tokenizer import build_char_tokenizer
from megatron_codistill.trainer.train import train_main
from tests.convert._util import hf_state, make_hf_model
from tests.trainer.conftest import FAST, TINY
from tests.trainer.test_resume import ENV

TOKENIZER = TINY.parent / "tokenizer"


def tiny_hf(path, *, hidden, layers, seed):
    """A random HF Llama of the tiny task's vocabulary, saved with the tiny tokenizer."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=16, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    make_hf_model(config, seed=seed).save_pretrained(path)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return tiny_hf(root / "large", hidden=64, layers=2, seed=1), tiny_hf(root / "small", hidden=32, layers=2, seed=2)


def run_args(run_dir, large, small):
    keep = [o for o in FAST if not o.startswith(("run.steps", "warm_start"))]
    # lr 0: one RL step leaves the weights exactly as loaded, so the export must equal the source
    return [str(TINY), f"run.dir={run_dir}", *keep, "run.steps=1", "run.eval_every=0", "warm_start.small_steps=0",
            "warm_start.large_steps=0", "large.arch=null", f"large.checkpoint={large}", "small.arch=null",
            f"small.checkpoint={small}", "large.tokenizer=null", "small.tokenizer=null",
            "large.optimizer.lr=0", "small.optimizer.lr=0"]


def cli(*args, nproc=1):
    launcher = [sys.executable, "-m", "megatron_codistill.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
        "-m", "megatron_codistill.cli"]
    out = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_tp2_checkpoint_exports_the_same_bytes_as_tp1(pair, tmp_path):
    large, small = pair
    outs = {}
    for tp in (1, 2):
        run_dir = tmp_path / f"tp{tp}"
        cli("train", *run_args(run_dir, large, small), f"large.tensor_parallel={tp}", nproc=tp)
        cli("export", str(run_dir), "--step", "1", "--out", str(tmp_path / f"export{tp}"))
        outs[tp] = tmp_path / f"export{tp}"
    for model, source in (("large", large), ("small", small)):
        a, b = outs[1] / model, outs[2] / model
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for f in a.iterdir():
            assert f.read_bytes() == (b / f.name).read_bytes(), (model, f.name)
        exported, original = hf_state(str(a)), hf_state(str(source))
        assert exported.keys() == original.keys()
        assert all(torch.equal(exported[k], original[k]) for k in original), model
        config = json.loads((a / "config.json").read_text())
        assert (config["eos_token_id"], config["pad_token_id"]) == (1, 0)
        assert json.loads((a / "generation_config.json").read_text())["eos_token_id"] == 1
        assert (a / "tokenizer.json").is_file()


def test_export_of_a_run_with_inline_architectures(tiny_overrides, tmp_path):
    train_main(str(TINY), [*tiny_overrides, "checkpoint.export_hf=true"])
    run_dir = tmp_path / "run"
    out = tmp_path / "small_only"
    cli("export", str(run_dir), "--model", "small", "--out", str(out))
    ours = (out / "model.safetensors").read_bytes()
    assert ours == (run_dir / "exports" / "step_000002" / "small" / "model.safetensors").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["eos_token_id"] == 1 and config["pad_token_id"] == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)  # loads as a plain HF checkpoint
    assert AutoTokenizer.from_pretrained(out).eos_token_id == model.generation_config.eos_token_id == 1
    refused = subprocess.run([sys.executable, "-m", "megatron_codistill.cli", "convert", "mcore-to-hf", "--mcore",
                              str(run_dir / "checkpoints" / "step_000002"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, env=ENV)
    assert refused.returncode == 2 and f"codistill export {run_dir} --step 2" in refused.stderr


def test_models_with_different_tokenizers_stop_before_any_compute(tiny_overrides, tmp_path, caplog):
    other = tmp_path / "other_tokenizer"
    build_char_tokenizer(ALPHABET[::-1], other)  # the same characters in another order
    with pytest.raises(ValueError) as e:
        train_main(str(TINY), [*tiny_overrides, f"large.tokenizer={other}"])
    message = str(e.value)
    assert str(TOKENIZER) in message and str(other) in message
    assert "token id 2 is '0' in one and ';' in the other" in message
    assert "warm start" not in caplog.text and "parameters on this rank" not in caplog.text


def test_an_unloadable_large_tokenizer_is_an_error(tiny_overrides):
    with pytest.raises(ValueError, match="tokenizer no-such-org/no-such-tokenizer: cannot be loaded"):
        train_main(str(TINY), [*tiny_overrides, "large.tokenizer=no-such-org/no-such-tokenizer"])
