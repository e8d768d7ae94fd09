"""HF <-> Megatron on live sharded models at TP 1/2 and PP 1/2, with transformers as the oracle.

Two tiny models cover the mapping's cases: Qwen2 (QKV bias, untied lm_head, GQA 4:2, vocab 300
padded to 384 / 512) and Llama (tied embeddings, llama3 RoPE scaling, GQA 4:2). One 2-rank job
(spawning ranks costs seconds) runs TP=2, then PP=2, then TP=1 (DP=2) and checks, for both:
- load_hf_into_model -> logits == transformers' logits on the same tokens (fp32, <= 1e-4);
- export_hf_weights -> exactly the tensors of the HF checkpoint, in buckets of the asked size
  (and, from a bf16 model, exactly those tensors in bf16);
- load_mcore_into_model from the converted checkpoint -> the same parameters, bit for bit;
- Megatron's own GPTModel.sharded_state_dict() loads the converted checkpoint, and what it saves
  converts back to HF bit for bit (the format is Megatron's, not a look-alike);
- loads into a model of another architecture (or TP) are refused, naming the difference;
- TP=2 saves with save_mcore_checkpoint; TP=2, PP=2 and TP=1 load that checkpoint (resharding)
  into the same parameters, and mcore-to-hf turns it back into the original HF tensors bit for bit.
"""

from __future__ import annotations

import os

import pytest
import torch

from megatron_codistill.convert import (
    convert_hf_to_mcore,
    convert_mcore_to_hf,
    export_hf_weights,
    load_hf_into_model,
    load_mcore_into_model,
    save_mcore_checkpoint,
)
from tests.convert._util import (
    LLAMA3_SCALING,
    hf_config,
    hf_logits,
    hf_state,
    make_hf_model,
    megatron_logits,
    save_hf,
    tokens,
)
from tests.distributed import run_distributed

CASES = {"qwen2": dict(family="qwen2"), "llama": dict(family="llama", tie=True, rope_scaling=LLAMA3_SCALING)}
BUCKET = 20_000  # bytes; the tiny models export in several buckets
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    out = {}
    for name, kw in CASES.items():
        hf = save_hf(make_hf_model(hf_config(**kw)), str(root / f"{name}_hf"))
        out[name] = {"hf": hf, "mcore": convert_hf_to_mcore(hf, str(root / f"{name}_mcore")),
                     "tp2": str(root / f"{name}_tp2"), "native": str(root / f"{name}_native")}
    return out


def _bucket_sizes(buckets):
    return [[t.numel() * t.element_size() for _, t in b] for b in buckets]


def _run_layout(tp: int, pp: int, checkpoints: dict, save_tp2: bool) -> dict:
    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.provider import build_gpt_model
    from megatron_codistill.parallel.layout import build_layouts

    large, _ = build_layouts(tp=tp, pp=pp)
    toks = tokens()
    results = {}
    for name, paths in checkpoints.items():
        arch = ModelArch.from_hf_config(paths["hf"])

        def build(arch=arch):
            return build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=large.is_first_stage,
                                   post_process=large.is_last_stage).eval()

        ref = hf_logits(paths["hf"], toks)
        model = build()
        load_hf_into_model(model, arch, paths["hf"], tp_group=large.tp_group)
        r = {"hf_logits": (megatron_logits(model, large, toks, arch.vocab_size) - ref).abs().max().item()}
        buckets = list(export_hf_weights(model, arch, tp_group=large.tp_group, pp_group=large.pp_group,
                                         bucket_bytes=BUCKET))
        exported = {n: t.clone() for b in buckets for n, t in b}
        expected = hf_state(paths["hf"])
        r["export_names"] = (sorted(exported), sorted(expected))
        r["export_mismatch"] = [n for n in expected
                                if n in exported and not torch.equal(exported[n], expected[n])]
        r["bucket_sizes"] = _bucket_sizes(buckets)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        # bf16 model: Megatron keeps local-spec norms in fp32, the export still agrees on one dtype
        half = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=large.is_first_stage,
                               post_process=large.is_last_stage, params_dtype=torch.bfloat16)
        load_hf_into_model(half, arch, paths["hf"], tp_group=large.tp_group)
        got = {n: t.clone() for b in export_hf_weights(half, arch, tp_group=large.tp_group,
                                                       pp_group=large.pp_group) for n, t in b}
        r["bf16_export_mismatch"] = [n for n in expected if not torch.equal(got[n], expected[n].bfloat16())]
        if large.is_first_stage:
            emb = model.embedding.word_embeddings.weight
            pad = emb[max(arch.vocab_size - large.tp_rank * emb.shape[0], 0):]
            r["padded_rows"] = (pad.shape[0], pad.abs().max().item() if pad.numel() else 0.0)
        if save_tp2:
            save_mcore_checkpoint(model, arch, paths["tp2"], tp_group=large.tp_group, pp_group=large.pp_group,
                                  dp_group=large.dp_group, hf_files=paths["hf"])
            r["native_load_diff"] = _megatron_native(model, build(), paths, large, params)
        for source in ("mcore", "tp2"):
            fresh = build()
            load_mcore_into_model(fresh, arch, paths[source], tp_group=large.tp_group)
            r[f"{source}_param_diff"] = max((p.detach() - params[n]).abs().max().item()
                                            for n, p in fresh.named_parameters())
            logits = megatron_logits(fresh, large, toks, arch.vocab_size)
            r[f"{source}_logits"] = (logits - ref).abs().max().item()
        results[name] = r
    return results


def _megatron_native(model, fresh, paths: dict, large, params: dict) -> float:
    """Megatron's own GPTModel.sharded_state_dict() reads our converted checkpoint, and writes one
    (`paths["native"]`, converted back to HF by the test). Returns max |loaded - HF-loaded params|."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedObject

    from megatron_codistill.convert.mcore_ckpt import save_sharded

    meta = {"dp_cp_group": large.pg_collection.dp_cp}
    if dist.get_rank() == 0:
        os.makedirs(paths["native"])
    dist.barrier()
    save_sharded(model.sharded_state_dict(metadata=meta), paths["native"])
    # weights only (fc1 is a ShardedTensorFactory); the linears' empty `_extra_state` objects are not saved
    wanted = {k: v for k, v in fresh.sharded_state_dict(metadata=meta).items() if not isinstance(v, ShardedObject)}
    fresh.load_state_dict(dist_checkpointing.load(wanted, paths["mcore"]), strict=False)
    return max((p.detach() - params[n]).abs().max().item() for n, p in fresh.named_parameters())


def _mismatches(checkpoints: dict) -> list[str]:
    """Messages of loads into a model (Qwen2 architecture, TP=2) of something else."""
    from megatron_codistill.convert import CheckpointError
    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.provider import build_gpt_model
    from megatron_codistill.parallel.layout import build_layouts

    large, _ = build_layouts(tp=2, pp=1)
    qwen, llama = (ModelArch.from_hf_config(checkpoints[n]["hf"]) for n in ("qwen2", "llama"))
    model = build_gpt_model(qwen, pg_collection=large.pg_collection, pre_process=True, post_process=True)
    attempts = [
        lambda: load_hf_into_model(model, llama, checkpoints["qwen2"]["hf"], tp_group=large.tp_group),
        lambda: load_hf_into_model(model, llama, checkpoints["llama"]["hf"], tp_group=large.tp_group),
        lambda: load_mcore_into_model(model, llama, checkpoints["qwen2"]["mcore"], tp_group=large.tp_group),
        lambda: load_hf_into_model(model, qwen, checkpoints["qwen2"]["hf"], tp_group=None),  # TP=1 shapes
        # only rank 0 checks the output directory; every rank must raise, none may wait for the others
        lambda: save_mcore_checkpoint(model, qwen, checkpoints["qwen2"]["hf"], tp_group=large.tp_group),
    ]
    messages = []
    for attempt in attempts:
        try:
            attempt()
            messages.append("loaded")
        except CheckpointError as err:
            messages.append(str(err))
    return messages


def _worker(checkpoints: dict) -> dict:
    """TP=2 first (it saves the checkpoint the others load), then PP=2, then TP=1 (DP=2)."""
    out = {layout: _run_layout(tp, pp, checkpoints, save_tp2=layout == "tp2")
           for layout, (tp, pp) in {"tp2": (2, 1), "pp2": (1, 2), "tp1": (1, 1)}.items()}
    out["mismatches"] = _mismatches(checkpoints)
    return out


def _check(results: list[dict]) -> None:
    for rank, per_rank in enumerate(results):
        for name, r in per_rank.items():
            where = f"rank {rank} {name}"
            assert r["hf_logits"] <= TOL, where
            got, want = r["export_names"]
            assert got == want, where
            assert r["export_mismatch"] == [], where
            sizes = r["bucket_sizes"]
            assert len(sizes) > 1, where
            assert all(sum(b) >= BUCKET and sum(b[:-1]) < BUCKET for b in sizes[:-1]), where
            assert r.get("padded_rows", (0, 0.0))[1] == 0.0, where
            assert r["bf16_export_mismatch"] == [], where
            for source in ("mcore", "tp2"):
                assert r[f"{source}_param_diff"] == 0.0, (where, source)
                assert r[f"{source}_logits"] <= TOL, (where, source)


@pytest.fixture(scope="module")
def results(checkpoints):
    return run_distributed(_worker, 2, checkpoints)


@pytest.mark.parametrize("layout", ["tp2", "pp2", "tp1"])
def test_layout_matches_hf_exports_and_loads_both_checkpoints(results, layout):
    _check([r[layout] for r in results])


def test_loading_into_a_model_of_another_architecture_is_refused(results):
    config, model_vs_arch, ckpt, shapes, _ = results[0]["mismatches"]
    assert "config.json does not describe the model being loaded" in config and "family: 'qwen2' != 'llama'" in config
    assert "linear_qkv.bias' has no mapping for family 'llama'" in model_vs_arch
    assert "holds another architecture" in ckpt
    assert "shape mismatch between model (TP=1) and architecture" in shapes
    assert "linear_qkv.weight: expected [128, 64], found [64, 64]" in shapes


def test_a_refusal_on_one_rank_is_raised_on_every_rank(results):
    assert all("already holds files" in r["mismatches"][-1] for r in results)


def test_vocab_padding_is_exercised(results):
    """TP=2: rank 1 holds rows 256..511 of which 300..511 are padding (zero after loading)."""
    assert results[1]["tp2"]["qwen2"]["padded_rows"][0] == 512 - 300


def test_tp2_checkpoint_back_to_hf_is_bit_exact(results, checkpoints, tmp_path):
    for name, paths in checkpoints.items():
        out = convert_mcore_to_hf(paths["tp2"], str(tmp_path / name))
        got, want = hf_state(out), hf_state(paths["hf"])
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[n], want[n]) for n in want), name
        assert os.path.isfile(os.path.join(out, "tokenizer.json"))


def test_megatron_own_sharded_state_dict_reads_and_writes_the_format(results, checkpoints, tmp_path):
    """GPTModel.sharded_state_dict() (TP=2) loaded the converted checkpoint into the same parameters;
    what Megatron itself saved (with a marker added) converts back to the original HF tensors."""
    from megatron_codistill.convert.mcore_meta import checkpoint_meta
    from megatron_codistill.convert.output_dir import write_marker
    from megatron_codistill.models.arch import ModelArch

    for name, paths in checkpoints.items():
        assert all(r["tp2"][name]["native_load_diff"] == 0.0 for r in results), name
        write_marker(paths["native"], checkpoint_meta(ModelArch.from_hf_config(paths["hf"]), torch.float32,
                                                      {"tp": 2, "pp": 1}))
        out = convert_mcore_to_hf(paths["native"], str(tmp_path / name))
        got, want = hf_state(out), hf_state(paths["hf"])
        assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in want), name


def test_llama3_rope_scaling_changes_logits(checkpoints):
    """The rope-scaling case can fail: without scaling the logits move by far more than TOL."""
    from transformers import AutoModelForCausalLM

    path = checkpoints["llama"]["hf"]
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    theta = plain.config.rope_parameters["rope_theta"]
    plain.config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    unscaled = AutoModelForCausalLM.from_config(plain.config).float().eval()
    unscaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        diff = (unscaled(tokens()).logits - hf_logits(path, tokens())).abs().max().item()
    assert diff > 100 * TOL
