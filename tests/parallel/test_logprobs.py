"""Vocab-parallel log-probs at TP=1 (padded vocab masking) and forward_logprobs' batching.

TP=2 against TP=1 (values and gradients) is in test_two_layouts.py, PP=2 in test_pipeline.py.
"""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.parallel.logprobs import forward_logprobs, vocab_parallel_logprobs
from tests.parallel._util import randomize_, reference_logprobs, tiny_arch


def test_padded_columns_are_masked_and_gradients_match_autograd(layouts):
    large, _ = layouts
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 5, 384, generator=gen)).requires_grad_(True)
    logits.data[..., 300:] = 50.0  # padded columns with huge logits must not matter
    targets = torch.randint(0, 300, (2, 5), generator=gen)
    a, b = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)

    logp, entropy = vocab_parallel_logprobs(logits, targets, large.tp_group, 300, with_entropy=True)
    (a * logp + b * entropy).sum().backward()
    grad = logits.grad.clone()

    ref = logits.detach()[..., :300].clone().requires_grad_(True)
    ref_all = torch.log_softmax(ref, dim=-1)
    ref_logp = ref_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref_entropy = -(ref_all.exp() * ref_all).sum(-1)
    (a * ref_logp + b * ref_entropy).sum().backward()

    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad[..., :300], ref.grad, atol=1e-6, rtol=1e-5)
    assert grad[..., 300:].abs().max() == 0


def test_logprobs_only_returns_a_tensor(layouts):
    large, _ = layouts
    logits = torch.randn(3, 4, 128)
    out = vocab_parallel_logprobs(logits, torch.zeros(3, 4, dtype=torch.long), large.tp_group, 100)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4)


@pytest.mark.parametrize("micro_batch_size", [1, 2, 5, 8])
def test_forward_logprobs_any_micro_batch_size(layouts, micro_batch_size):
    from megatron_codistill.models.provider import build_gpt_model

    large, _ = layouts
    model = build_gpt_model(tiny_arch(), pg_collection=large.pg_collection, pre_process=True, post_process=True)
    randomize_(model)
    tokens = torch.randint(0, 300, (5, 11), generator=torch.Generator().manual_seed(4))
    logp, entropy = forward_logprobs(model, large, tokens, micro_batch_size=micro_batch_size, with_entropy=True)
    with torch.no_grad():
        ref_logp, ref_entropy = reference_logprobs(model, tokens, 300)
    assert logp.shape == entropy.shape == (5, 10)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)


def test_forward_logprobs_rejects_bad_inputs(layouts):
    from megatron_codistill.models.provider import build_gpt_model

    large, _ = layouts
    model = build_gpt_model(tiny_arch(), pg_collection=large.pg_collection, pre_process=True, post_process=True)
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        forward_logprobs(model, large, torch.zeros(2, 4, dtype=torch.long), micro_batch_size=0)
    with pytest.raises(ValueError, match=r"\[B, T\] with T >= 2"):
        forward_logprobs(model, large, torch.zeros(4, dtype=torch.long), micro_batch_size=1)
