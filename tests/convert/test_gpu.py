"""On a CUDA machine: a GPTModel whose parameters live on the GPU loads HF and Megatron checkpoints
(host tensors copied to the device) and exports HF tensors from there. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.convert import convert_hf_to_mcore
from tests.convert._util import hf_config, hf_logits, hf_state, make_hf_model, save_hf, tokens
from tests.distributed import run_distributed


def _worker(hf: str, mcore: str) -> dict:
    from megatron_codistill.convert import export_hf_weights, load_hf_into_model, load_mcore_into_model
    from megatron_codistill.models.arch import ModelArch
    from megatron_codistill.models.provider import build_gpt_model
    from megatron_codistill.parallel.layout import build_layouts

    torch.backends.cuda.matmul.allow_tf32 = False
    large, _ = build_layouts(tp=1, pp=1)
    arch = ModelArch.from_hf_config(hf)
    toks = tokens().cuda()
    pos = torch.arange(toks.shape[1], device="cuda").unsqueeze(0).expand_as(toks)
    out = {}
    for name, load, path in (("hf", load_hf_into_model, hf), ("mcore", load_mcore_into_model, mcore)):
        model = build_gpt_model(arch, pg_collection=large.pg_collection, pre_process=True, post_process=True,
                                transformer_impl="local").eval()
        load(model, arch, path, tp_group=None)
        with torch.no_grad():
            logits = model(toks, pos, None)[..., : arch.vocab_size].float().cpu()
        out[f"{name}_device"] = str(next(model.parameters()).device)
        out[f"{name}_logits"] = (logits - hf_logits(hf, toks.cpu())).abs().max().item()
    exported = {n: t.cpu() for b in export_hf_weights(model, arch, tp_group=None, pp_group=None) for n, t in b}
    want = hf_state(hf)
    out["export_equal"] = sorted(exported) == sorted(want) and all(torch.equal(exported[n], want[n]) for n in want)
    return out


@pytest.mark.gpu
def test_cuda_model_loads_both_checkpoints_and_exports(tmp_path):
    hf = save_hf(make_hf_model(hf_config("qwen2")), str(tmp_path / "hf"))
    mcore = convert_hf_to_mcore(hf, str(tmp_path / "mcore"))
    (r,) = run_distributed(_worker, 1, hf, mcore)
    assert r["hf_device"].startswith("cuda") and r["mcore_device"].startswith("cuda")
    assert r["hf_logits"] <= 1e-4 and r["mcore_logits"] <= 1e-4
    assert r["export_equal"]
