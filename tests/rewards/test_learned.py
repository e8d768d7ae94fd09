"""A learned reward model scores padded batches exactly as it scores each sequence alone."""

from types import SimpleNamespace

import pytest
import torch

from megatron_codistill.rewards import LearnedReward


class MeanEmbedding(torch.nn.Module):
    """Reward = mean over real tokens of a learned per-token value (padding must be masked)."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.value = torch.nn.Embedding(vocab, 1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.value.weight)

    def forward(self, input_ids, attention_mask):
        v = self.value(input_ids)[..., 0] * attention_mask
        return v.sum(-1) / attention_mask.sum(-1)


def test_batched_scores_equal_single_unpadded_calls():
    model = MeanEmbedding()
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    responses = [[3, 3, 3], [9], [], [2, 10, 10, 1]]
    reward = LearnedReward(model, pad_token_id=0, batch_size=3)
    got = reward(["."] * 4, [""] * 4, prompt_ids=prompts, response_ids=responses)
    for p, r, g in zip(prompts, responses, got):
        ids = torch.tensor([p + r])
        expected = model.value.weight[ids[0], 0].mean().item()  # by hand, no padding involved
        assert g == pytest.approx(expected, abs=1e-6)


def test_hf_style_logits_max_length_and_non_finite():
    class Logits(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            last = attention_mask.sum(-1) - 1
            x = input_ids.gather(1, last[:, None]).float()  # [B, 1]: the last real token id
            x[x == 13] = float("inf")
            return SimpleNamespace(logits=x)

    reward = LearnedReward(Logits(), pad_token_id=0, max_length=2)
    assert reward.score_ids([[5, 6, 7], [8], [13]]) == [7.0, 8.0, 0.0]


def test_needs_response_ids_and_checks_shape():
    reward = LearnedReward(lambda input_ids, attention_mask: torch.zeros(3), pad_token_id=0)
    with pytest.raises(ValueError, match="needs response_ids"):
        reward(["a"], ["b"])
    with pytest.raises(ValueError, match=r"returned shape \(3,\); expected \[1\]"):
        reward(["a"], ["b"], response_ids=[[1]])
