"""Process reward models score each step as they score the sequence alone; checkpoints load by head."""

from pathlib import Path

import pytest
import torch

from megatron_codistill.rewards.learned import LearnedReward, LearnedStepReward, as_logits, load_reward_model

MODELS = Path(__file__).resolve().parents[2] / "examples" / "tiny_cpu" / "reward_models"


class TokenValue(torch.nn.Module):
    """Per-token score = running sum of a learned value of the tokens so far (so padding after can't leak)."""

    def __init__(self, vocab: int = 11, labels: int = 1) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.value = torch.nn.Embedding(vocab, labels)

    def forward(self, input_ids, attention_mask):
        return (self.value(input_ids) * attention_mask[..., None]).cumsum(1)  # [B, T, labels]


def test_step_scores_equal_single_unpadded_calls():
    model = TokenValue()
    seqs = [[1, 2, 3, 4], [5], [6, 7, 8, 9, 10, 1]]
    positions = [[1, 3], [0], [2, 5]]
    got = LearnedStepReward(model, pad_token_id=0, batch_size=2).score_steps(seqs, positions)
    for s, ps, g in zip(seqs, positions, got):
        alone = model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0, :, 0]
        assert g == pytest.approx([float(alone[p]) for p in ps], abs=1e-6)
    with pytest.raises(ValueError, match=r"sequence 1: step positions \[1\] outside its 1 tokens"):
        LearnedStepReward(model, pad_token_id=0).score_steps([[1], [2]], [[0], [1]])


def test_two_label_heads_give_log_odds():
    logits = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    assert torch.allclose(as_logits(logits, (2,)), torch.tensor([1.5, -2.0]))
    two = TokenValue(labels=2)
    s = [3, 4, 5]
    out = two(torch.tensor([s]), torch.ones(1, 3, dtype=torch.long))[0]
    got = LearnedStepReward(two, pad_token_id=0).score_steps([s], [[2]])
    assert got[0][0] == pytest.approx(float(out[2, 1] - out[2, 0]), abs=1e-6)
    with pytest.raises(ValueError, match=r"expected \[2, 3\], \[2, 3, 1\] or \[2, 3, 2\]"):
        as_logits(torch.zeros(2, 3, 4), (2, 3))


def test_config_only_checkpoint_starts_fresh_and_seeded(tmp_path):
    a = load_reward_model(str(MODELS / "outcome"), head="sequence", seed=3, vocab_size=16, pad_token_id=0, what="x")
    b = load_reward_model(str(MODELS / "outcome"), head="sequence", seed=3, vocab_size=16, pad_token_id=0, what="x")
    c = load_reward_model(str(MODELS / "outcome"), head="sequence", seed=4, vocab_size=16, pad_token_id=0, what="x")
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a)
    before = torch.get_rng_state()
    load_reward_model(str(MODELS / "outcome"), head="sequence", seed=5, vocab_size=16, pad_token_id=0, what="x")
    assert torch.equal(before, torch.get_rng_state())  # the run's RNG streams are untouched
    # saved weights load as they are, and score a right-padded batch like each sequence alone
    with torch.no_grad():
        a.score.weight.add_(1.0)
    a.save_pretrained(tmp_path / "trained")
    d = load_reward_model(str(tmp_path / "trained"), head="sequence", seed=9, vocab_size=16, pad_token_id=0, what="x")
    assert torch.equal(d.score.weight, a.score.weight)
    seqs = [[2, 3, 4, 5], [6, 7]]
    got = LearnedReward(d, pad_token_id=0).score_ids(seqs)
    for s, g in zip(seqs, got):
        with torch.no_grad():
            alone = float(d(input_ids=torch.tensor([s])).logits[0, 0])
        assert g == pytest.approx(alone, abs=1e-5)


def test_wrong_head_and_small_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"reward.process_model: .* is a LlamaForSequenceClassification; a token"):
        load_reward_model(str(MODELS / "outcome"), head="token", seed=0, vocab_size=16, pad_token_id=0,
                          what="reward.process_model")
    with pytest.raises(ValueError, match=r"reward.model: .* has vocab_size 16 but the policies' tokenizer has 50"):
        load_reward_model(str(MODELS / "outcome"), head="sequence", seed=0, vocab_size=50, pad_token_id=0,
                          what="reward.model")
    with pytest.raises(ValueError, match="reward.model: cannot read a Hugging Face config"):
        load_reward_model("/nonexistent/dir", head="sequence", seed=0, vocab_size=16, pad_token_id=0,
                          what="reward.model")
