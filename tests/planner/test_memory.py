"""Planner memory figures against hand computations, and parameter counts against transformers."""

import pytest

from megatron_codistill.models.arch import ModelArch
from megatron_codistill.planner import PlanRequest, evaluate_layout, get_gpu, load_pair
from megatron_codistill.planner.memory import stage_parameters


def _request(**kw) -> PlanRequest:
    (sn, small), (ln, large) = load_pair("1.5B/7B")
    base = dict(small=small, large=large, small_name=sn, large_name=ln, gpu=get_gpu("h100"), num_gpus=8,
                prompt_len=512, response_len=2048, prompts_per_step=32, group_size=8, recompute="none")
    return PlanRequest(**(base | kw))


def test_qwen25_7b_tp2_pp2_with_1p5b_replicas_matches_hand_computation():
    plan = evaluate_layout(_request(), tp=2, pp=2)
    assert plan.valid, plan.reasons
    assert (plan.tp, plan.pp, plan.dp) == (2, 2, 2)

    # Large, Qwen2.5-7B: h 3584, 28 layers, 28 heads x 128, 4 KV heads (512), ffn 18944, vocab 152064.
    # One layer, weights sharded by TP=2 (qkv + bias, o, gate/up/down), two norms replicated:
    layer = (3584 * (3584 + 2 * 512) + 3584 * 3584 + 3 * 3584 * 18944 + (3584 + 2 * 512)) // 2 + 2 * 3584
    assert layer == 116_532_480
    # Stage 0 of PP=2: 14 layers + the embedding shard (152064 is already a multiple of 128 x 2).
    stage0 = 14 * layer + 152064 * 3584 // 2
    assert stage0 == 1_903_953_408
    # bf16 weights 2 + fp32 grads 4 + Adam 12 / DP(2) = 12 bytes per parameter.
    assert plan.large.stage == 0 and plan.large.params == stage0
    assert plan.large.weights == 2 * stage0 and plan.large.gradients == 4 * stage0
    assert plan.large.optimizer == 6 * stage0
    # Activations: (8h + 4q + 4kv + 6F) / TP bytes per token and layer; 2560 tokens per micro-batch;
    # stage 0 holds PP = 2 micro-batches of its 14 layers in flight (1F1B).
    per_token_layer = (8 * 3584 + 4 * 3584 + 4 * 512 + 6 * 18944) / 2
    assert per_token_layer == 79_360
    assert plan.large.activations == 2 * 14 * 79_360 * 2560 == 5_688_524_800

    # Small, Qwen2.5-1.5B replica (tied embeddings): all 1,543,714,304 parameters on every GPU.
    small_params = 28 * (1536 * 2048 + 1536 * 1536 + 3 * 1536 * 8960 + 2048 + 2 * 1536) + 151936 * 1536 + 1536
    assert small_params == 1_543_714_304 == plan.small.params
    assert plan.small.weights + plan.small.gradients + plan.small.optimizer == 7.5 * small_params  # 2+4+12/8
    # 28 layers x 73,216 bytes x 2560 tokens + logits 6 bytes x 151936 x 2560.
    assert plan.small.activations == 28 * 73_216 * 2560 + 6 * 151936 * 2560 == 7_581_859_840

    engine_weights = 2 * small_params
    static = 12 * stage0 + 11_577_857_280
    # Training peak: both models' states + the larger of the two updates' activations + engine weights.
    assert plan.train_peak == static + 7_581_859_840 + engine_weights == 45_094_586_624
    # KV cache per engine GPU: 28 layers x 2 KV heads x 128 x 2 (K, V) x 2 bytes = 28,672 bytes per token;
    # 8 replicas -> 4 prompts (shared 512-token prefix) and 32 responses of 2048 tokens each.
    assert plan.kv_needed == (4 * 512 + 32 * 2048) * 28_672 == 1_937_768_448
    assert plan.kv_cache == plan.kv_needed and plan.waves == 1
    assert plan.generate_peak == static + engine_weights + 1_937_768_448


def test_full_recompute_keeps_layer_inputs_plus_one_layer():
    plan = evaluate_layout(_request(recompute="full"), tp=2, pp=2)
    assert plan.recompute
    # Stage 0 keeps 2 micro-batches x 14 layer inputs (2h / TP bytes per token, 2560 tokens) + one layer.
    assert plan.large.activations_full_recompute < plan.large.activations_no_recompute
    stage0 = 2 * 14 * 2 * 3584 / 2 * 2560 + 79_360 * 2560
    # Stage 1 keeps one micro-batch of inputs + one layer + the logits (6 bytes x 152064 / 2 per token):
    # with recompute the logits make the last stage the busiest one.
    stage1 = 14 * 2 * 3584 / 2 * 2560 + 79_360 * 2560 + 6 * 152064 / 2 * 2560
    assert stage1 > stage0
    assert plan.large.stage == 1 and plan.large.activations == stage1 == 1_499_463_680
    # The small model (1 micro-batch in flight, last stage): inputs + one layer + logits.
    assert plan.small.activations == 28 * 2 * 1536 * 2560 + 73_216 * 2560 + 6 * 151936 * 2560


def test_distributed_optimizer_off_keeps_all_adam_states():
    plan = evaluate_layout(_request(distributed_optimizer=False), tp=2, pp=2)
    assert plan.large.optimizer == 12 * plan.large.params
    assert plan.small.optimizer == 12 * plan.small.params


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_matches_transformers(tied):
    from transformers import Qwen2ForCausalLM

    arch = ModelArch(family="qwen2", hidden_size=64, num_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, ffn_hidden_size=96, vocab_size=256, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(arch.to_hf_config())
    numel = sum(p.numel() for p in model.parameters())  # shared tensors are yielded once
    assert stage_parameters(arch, tp=1, pp=1, stage=0) == numel
    # With PP=3 the stages together hold the model (+ a second embedding copy on the last when tied).
    total = sum(stage_parameters(arch, tp=1, pp=3, stage=s) for s in range(3))
    assert total == numel + (256 * 64 if tied else 0)
