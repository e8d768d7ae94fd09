"""The planner's activation memory follows the recompute setting a run config gives (none, selective,
full with method and layer count), against hand computations; `--config` reads it per model."""

import json

import pytest

from megatron_codistill.planner import evaluate_layout
from megatron_codistill.planner.cli import add_plan_args, request_from_args
from megatron_codistill.planner.memory import Recompute, stage_activations
from tests.planner.test_memory import _request

# Qwen2.5-7B at TP 2: A = (8h + 4q + 4kv + 6F) / 2 = 79,360 bytes per token and layer, X = layer input
# 2h / 2 = 3,584 bytes per token; 512 + 2048 = 2560 tokens per micro-batch; PP 2: 14 layers per stage,
# stage 0 holds 2 micro-batches in flight.
A, X, T = 79_360 * 2560, 3_584 * 2560, 2560


@pytest.mark.parametrize("recompute, expected", [
    (Recompute("none"), 2 * 14 * A),
    (Recompute("selective"), 2 * 14 * A),  # core attention under flash attention frees nothing
    (Recompute("full"), 2 * 14 * X + A),
    (Recompute("full", "uniform", 7), 2 * 2 * X + 7 * A),  # 2 chunk inputs, 7 layers while recomputed
    (Recompute("full", "block", 4), 2 * (4 * X + 10 * A) + A),  # 4 layers checkpointed, 10 keep all
    (Recompute("full", "block"), 2 * 14 * X + A),  # block over all layers = uniform by one
    (True, 2 * 14 * X + A), (False, 2 * 14 * A), ("full", 2 * 14 * X + A),
])
def test_stage_activations_follow_the_choice(recompute, expected):
    from megatron_codistill.planner.presets import load_model

    _, arch = load_model("7B")
    got = stage_activations(arch, tp=2, pp=2, stage=0, tokens=T, in_flight=2, recompute=recompute)
    assert got == expected


def test_layout_uses_the_configured_choice_and_refuses_what_megatron_would():
    plan = evaluate_layout(_request(recompute=Recompute("full", "uniform", 7), small_recompute="none"), tp=2, pp=2)
    assert plan.valid and plan.recompute and plan.recompute_choice == "full (uniform, 7 layers)"
    stage1 = 1 * 2 * X + 7 * A + 6 * 152064 // 2 * T  # 1 micro-batch x 2 chunk inputs + 7 layers + logits
    assert plan.large.activations == max(2 * 2 * X + 7 * A, stage1)
    assert plan.small.activations == plan.small.activations_no_recompute
    bad = evaluate_layout(_request(recompute=Recompute("full", "uniform", 5)), tp=2, pp=2)
    assert "recompute_num_layers (5) must divide the 14 layers per stage of PP 2" in bad.reasons
    sel = evaluate_layout(_request(recompute="selective"), tp=2, pp=2)
    assert not sel.recompute and sel.recompute_choice == "selective"
    assert sel.large.activations == sel.large.activations_no_recompute


RUN_YAML = """
small:
  arch: {family: llama, hidden_size: 32, num_layers: 1, num_attention_heads: 2, num_key_value_heads: 2,
         ffn_hidden_size: 64, vocab_size: 16}
  recompute: selective
large:
  arch: {family: llama, hidden_size: 128, num_layers: 4, num_attention_heads: 4, num_key_value_heads: 2,
         ffn_hidden_size: 256, vocab_size: 16}
  recompute: full
  recompute_method: block
  recompute_num_layers: 2
algorithm: {group_size: 8, prompts_per_step: 32}
"""


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_plan_args(parser.add_subparsers())
    return parser.parse_args(["plan", *argv])


def test_cli_config_reads_each_models_recompute(tmp_path, capsys):
    from megatron_codistill.planner.cli import run_plan_cli

    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML)
    req = request_from_args(_parse(["--config", str(config), "--gpus", "2"]))
    assert req.recompute == Recompute("full", "block", 2) and req.small_recompute == Recompute("selective")
    assert run_plan_cli(_parse(["--config", str(config), "--gpus", "2", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["request"]["recompute"] == "full (block, 2 layers)" and out["request"]["small_recompute"] == "selective"
    assert {p["recompute_choice"] for p in out["layouts"] if p["valid"]} == {"full (block, 2 layers)"}
    forced = request_from_args(_parse(["--config", str(config), "--gpus", "2", "--recompute", "none"]))
    assert (forced.recompute, forced.small_recompute) == ("none", None)
