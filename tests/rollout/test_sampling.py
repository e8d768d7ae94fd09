import math

import pytest
import torch

from megatron_codistill.rollout.sampling import behaviour_logprobs, greedy, next_tokens, sample


def probs_row(*ps):
    """Logits whose softmax at T=1 is exactly `ps`."""
    return torch.tensor([[math.log(p) for p in ps]])


P = (0.5, 0.3, 0.15, 0.05)


def test_no_filter_is_temperature_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    got = behaviour_logprobs(logits, 0.5, 0, 1.0)
    torch.testing.assert_close(got, torch.log_softmax(logits / 0.5, -1))


def test_top_k_keeps_k_most_likely_and_renormalises():
    got = behaviour_logprobs(probs_row(*P), 1.0, 2, 1.0).exp()[0]
    torch.testing.assert_close(got, torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]))


def test_top_p_keeps_tokens_whose_preceding_mass_is_within_p():
    # mass before each token: 0, .5, .8, .95 -> top_p=.7 keeps 2 tokens, .85 keeps 3
    got = behaviour_logprobs(probs_row(*P), 1.0, 0, 0.7).exp()[0]
    torch.testing.assert_close(got, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    got = behaviour_logprobs(probs_row(*P), 1.0, 0, 0.85).exp()[0]
    torch.testing.assert_close(got, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)


def test_top_k_and_top_p_apply_jointly_on_the_unfiltered_mass():
    # k=3 alone keeps 3; p=.4 alone keeps only the first (second has .5 before it)
    got = behaviour_logprobs(probs_row(*P), 1.0, 3, 0.4).exp()[0]
    torch.testing.assert_close(got, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # order of tokens in the vocabulary does not matter
    got = behaviour_logprobs(probs_row(0.05, 0.3, 0.5, 0.15), 1.0, 2, 1.0).exp()[0]
    torch.testing.assert_close(got, torch.tensor([0.0, 0.375, 0.625, 0.0]))


def test_temperature_is_applied_before_the_filters():
    logits = probs_row(*P)
    got = behaviour_logprobs(logits, 2.0, 2, 1.0)[0]
    p = torch.softmax(logits[0] / 2.0, -1)[:2]
    torch.testing.assert_close(got[:2], torch.log(p / p.sum()))
    assert torch.isinf(got[2:]).all()


def test_greedy_reports_temperature_one_log_softmax():
    logits = torch.tensor([[0.1, 3.0, -2.0], [5.0, 4.0, 0.0]])
    tok, lp = greedy(logits)
    assert tok.tolist() == [1, 0]
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])
    tok2, lp2 = next_tokens(logits, 0.0, 5, 0.5, None)
    assert torch.equal(tok, tok2) and torch.equal(lp, lp2)


def test_sample_never_draws_outside_the_support_and_reports_its_log_q():
    logq = behaviour_logprobs(probs_row(*P).repeat(500, 1), 1.0, 2, 1.0)
    tok, lp = sample(logq, torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {0, 1}
    torch.testing.assert_close(lp, logq[torch.arange(500), tok])


def test_zero_temperature_is_rejected_for_behaviour_logprobs():
    with pytest.raises(ValueError, match="temperature"):
        behaviour_logprobs(torch.zeros(1, 3), 0.0, 0, 1.0)
