"""Token-budget micro-batches: packing and padding figures on a hand-built batch, and an update with
`micro_batch_tokens` equal to the fixed-row update and to the whole-batch objective of `algo` (loss,
metrics, updated weights), for each model's loss. One gloo rank in this process."""

from __future__ import annotations

import pytest
import torch

from megatron_codistill import algo
from megatron_codistill.config import ModelConfig, OptimizerConfig
from megatron_codistill.parallel.schedule import pack_rows, split_micro_batches
from megatron_codistill.trainer import objectives as obj
from tests.parallel._util import single_rank, tiny_arch

G, PROMPT = 4, 3
LENGTHS = torch.tensor([20, 7, 12, 5, 19, 9, 16, 6, 8, 14, 11, 20])  # 3 groups of 4, T = 20


@pytest.fixture(scope="module")
def layouts():
    with single_rank() as pair:
        yield pair


def test_pack_rows_longest_first_under_the_budget():
    # budget 12: rows 1 and 3 (6 tokens each) share one micro-batch, then 0 and 2 (<= 3 tokens)
    assert pack_rows(torch.tensor([3, 6, 2, 6]), 12) == [[1, 3], [0, 2]]
    assert pack_rows(torch.tensor([3, 6, 2, 6]), 6) == [[1], [3], [0, 2]]
    # with FP8 padding a 6-token row computes 1 + 16 positions
    assert pack_rows(torch.tensor([3, 6, 2, 6]), 40, seq_multiple=16) == [[1, 3], [0, 2]]
    with pytest.raises(ValueError, match=r"micro_batch_tokens \(5\) is smaller than row 1 \(6 tokens"):
        pack_rows(torch.tensor([3, 6]), 5)


def test_split_shapes_rows_and_fp8_padding():
    tokens = torch.arange(4 * 6).view(4, 6)
    fixed = split_micro_batches(tokens, 3)
    assert [m.rows.tolist() for m in fixed] == [[0, 1, 2], [3]]
    assert [tuple(m.tokens.shape) for m in fixed] == [(3, 6), (3, 6)]  # the last one filled with row 3
    assert torch.equal(fixed[1].tokens, tokens[[3, 3, 3]])
    packed = split_micro_batches(tokens, 3, lengths=torch.tensor([3, 6, 2, 6]), micro_batch_tokens=12)
    assert [m.rows.tolist() for m in packed] == [[1, 3], [0, 2]]
    assert [tuple(m.tokens.shape) for m in packed] == [(2, 6), (2, 3)]
    assert torch.equal(packed[1].tokens, tokens[[0, 2], :3])
    # FP8: the model input (T_m - 1 positions) padded to a multiple of 16; real tokens untouched
    fp8 = split_micro_batches(tokens, 3, lengths=torch.tensor([3, 6, 2, 6]), micro_batch_tokens=40,
                              seq_multiple=16)
    assert [tuple(m.tokens.shape) for m in fp8] == [(2, 17), (2, 17)]
    assert torch.equal(fp8[0].tokens[:, :6], tokens[[1, 3]]) and not fp8[0].tokens[:, 6:].any()
    assert [tuple(m.tokens.shape) for m in split_micro_batches(tokens, 4, seq_multiple=16)] == [(4, 17)]
    assert [tuple(m.tokens.shape) for m in split_micro_batches(torch.zeros(2, 17, dtype=torch.long), 2,
                                                               seq_multiple=16)] == [(2, 17)]


def _policy(layouts, name="large", **cfg):
    from megatron_codistill.trainer.policy import Policy

    arch = dict(family="qwen2", hidden_size=32, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
                ffn_hidden_size=64, vocab_size=300, max_position_embeddings=64)
    model_cfg = ModelConfig(arch=arch, optimizer=OptimizerConfig(lr=1e-2, adam_eps=1e-3, clip_grad=0.0), **cfg)
    return Policy(name, model_cfg, layouts[0], total_steps=2, seed=7)


def _batch():
    gen = torch.Generator().manual_seed(0)
    B, T = LENGTHS.numel(), int(LENGTHS.max())
    tokens = torch.randint(0, tiny_arch().vocab_size, (B, T), generator=gen)
    pos = torch.arange(T - 1)
    mask = ((pos >= PROMPT - 1) & (pos < LENGTHS[:, None] - 1)).float()
    tokens = tokens * (torch.arange(T) < LENGTHS[:, None])  # right padding with id 0
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0])
    return tokens, mask, rewards, gen


def test_padding_metrics_of_a_hand_built_batch(layouts):
    tokens = torch.randint(0, 300, (4, 6), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([3, 6, 2, 6])
    mask = torch.ones(4, 5)
    policy = _policy(layouts, micro_batch_size=2, micro_batch_tokens=12)
    out = policy.update(tokens, obj.sft_loss_fn(mask, mask.sum()), lengths=lengths)
    # real tokens 17; packed: 2 x 6 + 2 x 3 = 18 positions; fixed (2 rows x 6) x 2 = 24
    assert out["pad_frac"] == pytest.approx(1 / 18)
    assert out["pad_frac_fixed"] == pytest.approx(7 / 24)
    assert out["loss/num_tokens"] == 20  # an additive metric sums over micro-batches


def _inputs(kind: str, a, logp, mask, rewards, gen):
    """Scored inputs with old log-probs off the current ones (ratios != 1, clipping happens)."""
    old = logp + 0.3 * torch.randn(logp.shape, generator=gen)
    s = obj.Scored(mask=mask, old_logp=old, task_rewards=rewards)
    if kind == "small":
        s.teacher_logp = logp + 0.5 * torch.randn(logp.shape, generator=gen)
        return obj.small_inputs(a, s), dict(teacher=s.teacher_logp)
    if kind == "large":
        s.behaviour_logp = old + 0.4 * torch.randn(logp.shape, generator=gen)
        return obj.large_inputs(a, s), dict(behaviour=s.behaviour_logp)
    return obj.grpo_inputs(a, s), {}


def _reference(kind, a, opts, logp, inputs, mask, rewards, extra, entropy):
    """The objective of `algo` on the whole batch at once (no micro-batches)."""
    old = inputs.old_logp
    common = dict(group_size=G, scale_by_std=a.advantage_std, options=opts, entropy=entropy)
    if kind == "small":
        return algo.small_model_loss(logp, old, extra["teacher"], rewards, mask, alpha=a.kd_alpha, kappa=a.kd_kappa,
                                     token_alpha=a.kd_token_alpha, **common)
    if kind == "large":
        return algo.large_model_loss(logp, old, extra["behaviour"], rewards, mask, scheme=a.is_weight, cap=a.is_cap,
                                     **common)
    return algo.grpo_loss(logp, old, rewards, mask, **common)


@pytest.mark.parametrize("kind, agg, micro_batch_size", [
    ("large", "token_mean", 4), ("small", "seq_mean_token_mean", 3), ("grpo", "seq_mean_token_sum_norm", 5),
])
def test_token_budget_update_equals_fixed_rows_and_the_whole_batch_objective(layouts, kind, agg,
                                                                             micro_batch_size):
    from megatron_codistill.config import AlgorithmConfig

    a = AlgorithmConfig(group_size=G, loss_agg=agg, kd_token_alpha=0.1, is_weight="token_mis", is_cap=1.5,
                        clip_eps_high=0.28)
    opts = obj.policy_options(a, max_new_tokens=20, use_kl=False)
    tokens, mask, rewards, gen = _batch()
    fixed = _policy(layouts, micro_batch_size=micro_batch_size)
    packed = _policy(layouts, micro_batch_size=micro_batch_size, micro_batch_tokens=48)
    # forward-only log-probs: equal on every real position (packed ones stop at each micro-batch's end)
    lp_fixed = fixed.logprobs(tokens, lengths=LENGTHS)
    lp_packed, ent = packed.logprobs(tokens, lengths=LENGTHS, with_entropy=True)
    real = torch.arange(tokens.shape[1] - 1) < LENGTHS[:, None] - 1
    assert torch.allclose(lp_fixed[real], lp_packed[real], atol=1e-5, rtol=0)

    inputs, extra = _inputs(kind, a, lp_fixed, mask, rewards, gen)
    den = obj.global_denominator(inputs.mask, agg, None, 1)
    ref = _reference(kind, a, opts, lp_fixed, inputs, mask, rewards, extra, ent)
    outs = [p.update(tokens, obj.surrogate_loss_fn(inputs, opts, den), lengths=LENGTHS, with_entropy=True,
                     batch_metrics=inputs.metrics) for p in (fixed, packed)]
    assert outs[1]["pad_frac"] < outs[1]["pad_frac_fixed"] == pytest.approx(outs[0]["pad_frac"])
    expected = {k: float(v) for k, v in ref.metrics.items()} | {"loss": float(ref.loss)}
    assert 0 < expected["loss/clip_frac"] < 1, "the test needs clipped and unclipped tokens"
    for scheme, out in zip(("fixed", "packed"), outs):
        for key, value in expected.items():
            assert out[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (scheme, key)
    assert outs[0]["grad_norm"] == pytest.approx(outs[1]["grad_norm"], rel=1e-5)
    w_fixed, w_packed = fixed.module.state_dict(), packed.module.state_dict()
    for name, w in w_fixed.items():
        if torch.is_tensor(w) and w.is_floating_point():
            assert torch.allclose(w, w_packed[name], atol=1e-6, rtol=0), name
    assert any((w_fixed[n] - v).abs().max() > 1e-4 for n, v in _policy(layouts).module.state_dict().items()
               if torch.is_tensor(v) and v.is_floating_point()), "the step must move the weights"
