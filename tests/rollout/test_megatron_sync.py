"""The embedded engine against Megatron-Core models whose weights reach it only through the exporter.

One 2-rank gloo job (spawning ranks costs seconds) builds the small layout (TP=1) and the large one
(TP=2) from the same HF file and checks:
- TP=1: greedy rollouts of the engine (weights from the HF file, and weights exported
  from a Megatron model loaded from that file by the convert module) == an independent greedy loop
  over the Megatron model.
- TP=2: the Megatron shards are moved away from the HF file (a stand-in for a
  training step), exported in small buckets and synced into an engine built from the config on
  every rank; the engine's log-probs on a probe batch and on its own rollouts equal the trainer's
  `forward_logprobs` (<= 1e-4).
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_distributed

VOCAB = 40  # padded to 128 in Megatron: the exporter must unpad
PROMPTS = [[3, 4, 5], [7], [12, 30, 2, 8, 9]]


def _save_hf(path: str, seed: int = 0) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.3 * noise)
    model.save_pretrained(path)


def _megatron_model(hf_dir: str, layout):
    from megatron_codistill.convert.model_io import load_hf_into_model
    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.provider import build_gpt_model

    arch = ModelArch.from_hf_config(hf_dir)
    model = build_gpt_model(arch, pg_collection=layout.pg_collection, pre_process=True, post_process=True)
    load_hf_into_model(model, arch, hf_dir, tp_group=layout.tp_group)
    return model.eval(), arch


def _export(model, arch, layout, bucket_bytes: int):
    from megatron_codistill.convert.export import export_hf_weights

    return export_hf_weights(
        model, arch, tp_group=layout.tp_group, pp_group=layout.pp_group, bucket_bytes=bucket_bytes
    )


@torch.no_grad()
def _megatron_greedy(model, prompt: list[int], steps: int) -> list[int]:
    seq = list(prompt)
    for _ in range(steps):
        ids = torch.tensor([seq])
        logits = model(ids, torch.arange(len(seq))[None], None)[0, -1, :VOCAB]  # TP=1: full vocab
        seq.append(int(logits.argmax()))
    return seq[len(prompt) :]


@torch.no_grad()
def _perturb_(model, layout) -> None:
    """Move every weight: TP-sharded ones by rank-specific noise, replicated ones identically."""
    for name, p in sorted(model.named_parameters()):
        sharded = getattr(p, "tensor_model_parallel", False)
        seed = sum(map(ord, name)) * 10 + (layout.tp_rank if sharded else 0)
        p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))


def _greedy_tp1(hf_dir: str, small) -> dict:
    from megatron_codistill.rollout.base import SamplingParams
    from megatron_codistill.rollout.embedded import EmbeddedEngine
    from megatron_codistill.rollout.weight_sync import sync_weights

    model, arch = _megatron_model(hf_dir, small)
    synced = EmbeddedEngine.from_config(arch.to_hf_config())
    stats = sync_weights(synced, _export(model, arch, small, bucket_bytes=4096), version=1)
    from_file = EmbeddedEngine.from_pretrained(hf_dir)
    sp = SamplingParams(temperature=0.0, max_new_tokens=8)
    return {
        "megatron": [_megatron_greedy(model, p, 8) for p in PROMPTS],
        "synced": [g[0].response_ids for g in synced.generate(PROMPTS, 1, sp)],
        "from_file": [g[0].response_ids for g in from_file.generate(PROMPTS, 1, sp)],
        "buckets": stats.buckets,
    }


def _sync_tp2(hf_dir: str, large) -> dict:
    from megatron_codistill.parallel.logprobs import forward_logprobs
    from megatron_codistill.rollout.base import RolloutBatch, SamplingParams
    from megatron_codistill.rollout.embedded import EmbeddedEngine
    from megatron_codistill.rollout.weight_sync import (
        logprob_mismatch,
        probe_tokens,
        sync_weights,
        verify_sync,
    )

    model, arch = _megatron_model(hf_dir, large)
    _perturb_(model, large)
    engine = EmbeddedEngine.from_config(arch.to_hf_config())
    stats = sync_weights(engine, _export(model, arch, large, bucket_bytes=8192), version=3)

    probe = probe_tokens(VOCAB, batch=4, length=12)
    trainer_probe = forward_logprobs(model, large, torch.tensor(probe), micro_batch_size=2)
    probe_metrics = verify_sync(engine, probe, trainer_probe, atol=1e-4, version=3)
    file_engine = EmbeddedEngine.from_pretrained(hf_dir)  # the unperturbed weights
    file_diff = (torch.tensor(file_engine.score(probe)) - trainer_probe).abs().max().item()

    rollouts = engine.generate(PROMPTS, 2, SamplingParams(temperature=1.0, max_new_tokens=6, seed=5))
    batch = RolloutBatch.from_rollouts(rollouts, pad_id=0)
    trainer_lp = forward_logprobs(model, large, batch.tokens, micro_batch_size=3)
    mismatch = logprob_mismatch(batch.behaviour_logprobs, trainer_lp, batch.response_mask)
    return {
        "probe": probe_metrics,
        "rollouts": mismatch,
        "file_diff": file_diff,
        "buckets": stats.buckets,
        "version": engine.version,
        "tokens": batch.tokens.tolist(),
    }


def _worker(hf_dir: str) -> dict:
    from megatron_codistill.parallel.layout import build_layouts

    large, small = build_layouts(tp=2, pp=1)
    return {"tp1": _greedy_tp1(hf_dir, small), "tp2": _sync_tp2(hf_dir, large)}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    hf_dir = str(tmp_path_factory.mktemp("hf"))
    _save_hf(hf_dir)
    return run_distributed(_worker, 2, hf_dir)


def test_engine_greedy_equals_a_megatron_greedy_loop(job):
    for out in (r["tp1"] for r in job):
        assert out["synced"] == out["megatron"]
        assert out["from_file"] == out["megatron"]
        assert out["buckets"] > 1
        assert len({tuple(r) for r in out["megatron"]}) > 1  # not a degenerate model


def test_sync_from_tp2_megatron_gives_the_trainers_logprobs(job):
    results = [r["tp2"] for r in job]
    for out in results:
        assert out["version"] == 3 and out["buckets"] > 1
        assert out["probe"]["rollout/sync_probe_logprob_diff_max"] <= 1e-4
        assert out["rollouts"]["rollout/logprob_diff_max"] <= 1e-4
        assert out["file_diff"] > 1e-2  # the synced weights are the trained ones, not the file's
    assert results[0]["tokens"] == results[1]["tokens"]  # both ranks' engines hold the same weights
