"""A real SGLang server (one GPU) against the embedded engine on the same tiny checkpoints.

Needs CUDA and `pip install sglang`; skipped otherwise. Checks generation with returned log-probs,
filtered (renormalised) log-probs, a weight update from disk and one through the NCCL group.
"""

from __future__ import annotations

import importlib.util
import socket

import pytest
import torch

from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.rollout.embedded import EmbeddedEngine
from megatron_codistill.rollout.sglang import SGLangEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang is not installed"),
]
PROMPTS = [[3, 4, 5, 6], [7, 8], [100, 20, 30]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save(path, seed: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return [(root / f"m{i}", _save(root / f"m{i}", seed=i)) for i in range(3)]


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    path = checkpoints[0][0]
    engine = SGLangEngine.launch(
        str(path),
        tp=1,
        mem_fraction=0.3,
        base_port=_free_port(),
        startup_timeout=900,
        extra_args=["--skip-tokenizer-init", "--dtype", "float32", "--disable-cuda-graph"],
        log_dir=tmp_path_factory.mktemp("logs"),
    )
    yield engine
    engine.shutdown()


def _check_against(engine: SGLangEngine, model, sampling: SamplingParams, tol: float = 2e-3):
    """Rollouts' log-probs == the reference model's log q of the same tokens."""
    ref = EmbeddedEngine(model, pad_token_id=0, device="cuda")
    out = engine.generate(PROMPTS, 2, sampling)
    for group in out:
        for r in group:
            assert len(r.response_ids) == len(r.logprobs) > 0
            full = ref.score([r.prompt_ids + r.response_ids])[0][len(r.prompt_ids) - 1 :]
            if sampling.temperature == 0:
                torch.testing.assert_close(torch.tensor(r.logprobs), torch.tensor(full), atol=tol, rtol=0)
            else:
                assert all(lp <= 1e-6 for lp in r.logprobs)
    return out


def test_greedy_generation_and_score_match_the_checkpoint(server, checkpoints):
    out = _check_against(server, checkpoints[0][1], SamplingParams(temperature=0.0, max_new_tokens=8))
    ref = EmbeddedEngine(checkpoints[0][1], pad_token_id=0, device="cuda")
    want = ref.generate(PROMPTS, 1, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert [g[0].response_ids for g in out] == [g[0].response_ids for g in want]
    seqs = [p + [1, 2, 3] for p in PROMPTS]
    torch.testing.assert_close(
        torch.tensor(sum(server.score(seqs), [])), torch.tensor(sum(ref.score(seqs), [])), atol=2e-3, rtol=0
    )


def test_filtered_sampling_returns_renormalised_logprobs(server):
    out = server.generate(PROMPTS, 4, SamplingParams(temperature=1.0, top_k=5, max_new_tokens=6, seed=1))
    lps = [lp for g in out for r in g for lp in r.logprobs]
    assert all(lp <= 1e-6 for lp in lps) and min(lps) >= torch.log(torch.tensor(1e-6)).item()


def test_update_from_disk_then_through_the_nccl_group(server, checkpoints):
    path1, model1 = checkpoints[1]
    server.update_weights_from_disk(str(path1), version=1)
    _check_against(server, model1, SamplingParams(temperature=0.0, max_new_tokens=6))

    _, model2 = checkpoints[2]
    server.init_weight_update_group("127.0.0.1", _free_port(), backend="nccl")
    named = [(k, v.cuda()) for k, v in model2.state_dict().items() if "rotary_emb" not in k]
    server.update_weights_from_distributed([named[:10], named[10:]], version=2)
    assert server.version == 2
    _check_against(server, model2, SamplingParams(temperature=0.0, max_new_tokens=6))
