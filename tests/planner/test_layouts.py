"""Layout enumeration: invalid layouts carry their reasons; valid ones are ranked by step time."""

import json

import pytest

from megatron_codistill.planner import PlanRequest, get_gpu, load_model, load_pair, plan_layouts
from megatron_codistill.planner.cli import add_plan_args, run_plan_cli
from megatron_codistill.planner.timing import matmul_parameters, train_time


def _request(pair="1.5B/7B", **kw) -> PlanRequest:
    (sn, small), (ln, large) = load_pair(pair)
    return PlanRequest(**(dict(small=small, large=large, small_name=sn, large_name=ln, gpu=get_gpu("h100"),
                               num_gpus=8) | kw))


def _by_layout(plans):
    return {(p.tp, p.pp): p for p in plans}


def test_divisibility_reasons():
    plans = _by_layout(plan_layouts(_request(), [(8, 1), (1, 8), (3, 1), (2, 2)]))
    assert plans[(8, 1)].reasons == ["num_attention_heads (28) not divisible by TP (8)",
                                     "num_key_value_heads (4) not divisible by TP (8)"]
    assert plans[(1, 8)].reasons == ["num_layers (28) not divisible by PP (8)"]
    assert plans[(3, 1)].reasons[0] == "trainer GPUs (8) not divisible by TP x PP (3 x 1 = 3)"
    assert plans[(2, 2)].valid


def test_memory_and_node_reasons():
    req = _request("7B/72B", num_gpus=16, gpu=get_gpu("h100"))
    plans = _by_layout(plan_layouts(req))
    (reason,) = plans[(1, 1)].reasons
    assert reason.startswith("training needs ") and "with recompute), over the 74.6 GiB usable" in reason
    assert any("TP (16) spans nodes (8 GPUs per node)" in r for r in plans[(16, 1)].reasons)
    # 72B: 64 heads, 8 KV heads, 80 layers: TP 8 x PP 2 is structurally fine, so only memory can reject it.
    assert all(r.startswith("training needs") for r in plans[(8, 2)].reasons)


def test_request_problems_reject_every_layout():
    req = _request(num_gpus=12)  # 32 prompts do not split over 12 ranks
    assert plan_layouts(req) == []
    args = _parse(["1.5B/7B", "--gpus", "12"])
    assert run_plan_cli(args) == 1


def test_valid_layouts_ranked_fastest_first_and_times_positive():
    plans = plan_layouts(_request(num_gpus=16))
    valid = [p for p in plans if p.valid]
    assert len(valid) >= 3
    steps = [p.step_time for p in valid]
    assert steps == sorted(steps)
    assert all(t > 0 for p in valid for k, t in p.times.items() if k != "sync")
    assert plans.index(valid[-1]) < min((plans.index(p) for p in plans if not p.valid), default=len(plans))


def test_update_costs_three_forwards_and_recompute_four():
    _, arch = load_model("1.5B")
    kw = dict(tokens=1000, seq_len=100, gpus=2, peak_flops=1e12, mfu=0.5)
    fwd = train_time(arch, backward=False, **kw)
    n = matmul_parameters(arch)
    attn = 4 * 28 * 1536 * 100 / 2
    assert fwd == pytest.approx((2 * n + attn) * 1000 / (2 * 1e12 * 0.5))
    assert train_time(arch, backward=True, **kw) == pytest.approx(3 * fwd)
    assert train_time(arch, backward=True, recompute=True, **kw) == pytest.approx(4 * fwd)
    # 1F1B bubble: PP 4 with 12 micro-batches costs (1 + 3/12).
    assert train_time(arch, backward=True, pp=4, micro_batches=12, **kw) == pytest.approx(3 * fwd * 1.25)


def test_colocated_kv_cache_limits_concurrency_into_waves():
    # Long responses on few GPUs: the KV cache for every rollout does not fit next to training state.
    req = _request("0.5B/1.5B", num_gpus=8, response_len=8192, prompts_per_step=1024)
    valid = [p for p in plan_layouts(req) if p.valid]
    assert valid and all(p.waves > 1 for p in valid)
    assert all(p.kv_cache < p.kv_needed for p in valid)
    cap = req.gpu.memory_bytes - req.reserve_gib * 1024**3
    assert all(p.generate_peak <= cap for p in valid)


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_plan_args(parser.add_subparsers(dest="command"))
    return parser.parse_args(["plan", *argv])


def test_cli_json_and_errors(capsys):
    assert run_plan_cli(_parse(["0.5B/1.5B", "--gpus", "8", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["request"]["small_params"] == 494_032_768 and out["problems"] == []
    assert out["layouts"][0]["valid"] and "step" in out["layouts"][0]["time_s"]
    assert run_plan_cli(_parse(["1.5B/70B"])) == 2
    assert "preset pairs: 0.5B/1.5B" in capsys.readouterr().err
    assert run_plan_cli(_parse(["1.5B/7B", "--gpu", "a100"])) == 2
    assert "valid: ['h100', 'h200']" in capsys.readouterr().err


def test_cli_markdown_reads_hf_config_dirs(tmp_path, capsys):
    _, arch = load_model("0.5B")
    arch.to_hf_config().save_pretrained(tmp_path / "small")
    _, big = load_model("3B")
    big.to_hf_config().save_pretrained(tmp_path / "large")
    rc = run_plan_cli(_parse(["--small", str(tmp_path / "small"), "--large", str(tmp_path / "large"),
                              "--gpus", "8", "--gpu", "h200"]))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("# Plan: small (0.49B, small) + large (3.09B, large) on 8 x H200 141GB")
    assert "| rank | TP | PP | DP |" in out and "## Invalid layouts" in out


RUN_YAML = """
small:
  arch: {family: llama, hidden_size: 32, num_layers: 1, num_attention_heads: 2, num_key_value_heads: 2,
         ffn_hidden_size: 64, vocab_size: 16}
  micro_batch_size: 64
large:
  arch: {family: llama, hidden_size: 128, num_layers: 4, num_attention_heads: 4, num_key_value_heads: 2,
         ffn_hidden_size: 256, vocab_size: 16}
  micro_batch_size: 32
rollout: {max_prompt_length: 16, sampling: {max_new_tokens: 24}}
algorithm: {group_size: 8, prompts_per_step: 32}
"""


def test_cli_reads_models_and_batch_from_a_run_config(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML)
    assert run_plan_cli(_parse(["--config", str(config), "--gpus", "2", "--prompts", "64", "--json"])) == 0
    req = json.loads(capsys.readouterr().out)["request"]
    # From the YAML: group 8, prompt 16 + 24 new tokens, micro-batches 32 / 64; --prompts overrides 32.
    assert (req["group_size"], req["prompt_len"], req["response_len"]) == (8, 16, 24)
    assert (req["micro_batch_large"], req["micro_batch_small"], req["prompts_per_step"]) == (32, 64, 64)
    # Large: 4 x (qkv 128 x (128 + 2 x 64) + proj 128^2 + MLP 3 x 128 x 256 + 2 norms) + embedding, head
    # (16 x 128 each) and the final norm.
    assert req["large_params"] == 4 * (128 * 256 + 128 * 128 + 3 * 128 * 256 + 2 * 128) + 2 * 16 * 128 + 128
    assert run_plan_cli(_parse(["1.5B/7B", "--config", str(config)])) == 2
