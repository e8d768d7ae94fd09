"""Process supervision on the arithmetic task: a group with mixed right and wrong steps gets the advantages
computed by hand, in the generator's GRPO, the small model's KD-shaped update and the large model's
importance-weighted one; a process reward model's scores land on the steps' last tokens."""

import math
from pathlib import Path

import pytest
import torch

from megatron_codistill.config import AlgorithmConfig
from megatron_codistill.rewards.learned import LearnedStepReward
from megatron_codistill.rollout.base import Rollout, RolloutBatch
from megatron_codistill.trainer import objectives as obj
from megatron_codistill.trainer.conditioning import problems_by_prompt
from megatron_codistill.trainer.prompts import Problem
from megatron_codistill.trainer.task_reward import StepRewards

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tiny_cpu" / "tokenizer"
GOLD = "2507,1304;047"  # 12 + 35: digit steps "2507,", "1304;", then the answer "047"
RESPONSES = ["2507,1304;047", "2507,1314;057", "2517;047"]  # steps right: [1, 1, 1], [1, 0, 0], [0, 0]
X = 0.5 / math.sqrt(2 / 7)  # 8 steps of the group, 4 right: mean 1/2, Bessel std sqrt(2/7); +-X normalised
# A_t = sum of the normalised rewards of steps ending at or after t; step ends: "," ";" and the last token (EOS)
HAND = [[3 * X] * 5 + [2 * X] * 5 + [X] * 4,           # 2507, | 1304; | 047<eos>
        [-X] * 5 + [-2 * X] * 5 + [-X] * 4,
        [-2 * X] * 5 + [-X] * 4]                       # 2517; | 047<eos>


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def group(tokenizer):
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    problem = Problem(enc("12+35="), "12+35=", "047", GOLD)
    rows = [Rollout(problem.prompt_ids, enc(r) + [tokenizer.eos_token_id], [0.0] * (len(r) + 1), "stop")
            for r in RESPONSES]
    return problem, RolloutBatch.from_rollouts([rows], tokenizer.pad_token_id)


def hand_advantages(batch):
    out = torch.zeros_like(batch.response_mask)
    p = int(batch.prompt_lengths[0])
    for i, row in enumerate(HAND):
        out[i, p - 1 : p - 1 + len(row)] = torch.tensor(row)
    return out


def scored(batch, rewards, mask, **extra):
    old = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(0)) * batch.response_mask
    return obj.Scored(mask=batch.response_mask, old_logp=old, task_rewards=torch.tensor([1.0, 0.0, 1.0]),
                      step_rewards=rewards, step_mask=mask, **extra)


def test_exact_step_rewards_and_grpo_advantages_by_hand(tokenizer):
    problem, batch = group(tokenizer)
    rewards, mask, metrics = StepRewards(tokenizer, [",", ";"], index=problems_by_prompt([problem]))(batch)
    p = int(batch.prompt_lengths[0])
    assert mask[0].nonzero().flatten().tolist() == [p - 1 + 4, p - 1 + 9, p - 1 + 13]
    assert rewards[1, [p + 3, p + 8, p + 12]].tolist() == [1.0, 0.0, 0.0]
    assert metrics == pytest.approx({"ps/steps_mean": 8 / 3, "ps/step_reward_mean": 0.5})
    a = AlgorithmConfig(group_size=3)
    inputs = obj.grpo_inputs(a, scored(batch, rewards, mask))
    assert torch.allclose(inputs.surrogate.advantages, hand_advantages(batch), atol=1e-5)


def test_small_model_adds_its_whitened_kd_reward_and_large_model_keeps_its_weights(tokenizer):
    problem, batch = group(tokenizer)
    rewards, mask, _ = StepRewards(tokenizer, [",", ";"], index=problems_by_prompt([problem]))(batch)
    a = AlgorithmConfig(group_size=3, kd_alpha=0.5)
    s = scored(batch, rewards, mask)
    # the teacher differs from the student by a constant per row: KD_i = [1, 0, -1] -> 0.5 * KD whitened = [1, 0, -1]
    s.teacher_logp = s.old_logp + torch.tensor([1.0, 0.0, -1.0])[:, None]
    small = obj.small_inputs(a, s)
    kd = torch.tensor([0.5, 0.0, -0.5]) / (0.5 + 1e-6)  # alpha * KD, whitened (mean 0, Bessel std 0.5)
    expected = hand_advantages(batch) + kd[:, None] * batch.response_mask
    assert torch.allclose(small.surrogate.advantages, expected, atol=1e-5)
    assert float(small.metrics["reward/task_mean"]) == pytest.approx(2 / 3)
    # opd-like task weight 0 leaves the KD part only
    assert torch.allclose(obj.small_inputs(a, s, task_weight=0.0).surrogate.advantages,
                          kd[:, None] * batch.response_mask, atol=1e-5)

    s.behaviour_logp = s.old_logp - 0.1 * batch.response_mask  # lambda = 0.1 -> token-TIS weight e^0.1
    large = obj.large_inputs(a, s)
    assert torch.allclose(large.surrogate.advantages, hand_advantages(batch), atol=1e-5)
    assert torch.allclose(large.surrogate.weights[batch.response_mask > 0], torch.tensor(math.exp(0.1)))


def test_dynamic_sampling_drops_the_steps_of_masked_groups(tokenizer):
    problem, batch = group(tokenizer)
    rewards, mask, _ = StepRewards(tokenizer, [",", ";"], index=problems_by_prompt([problem]))(batch)
    s = scored(batch, rewards, mask)
    s.mask = torch.zeros_like(s.mask)  # the whole group dropped
    assert float(obj.grpo_inputs(AlgorithmConfig(group_size=3), s).surrogate.advantages.abs().sum()) == 0.0


class StepScore(torch.nn.Module):
    """Token score = (token id - 7) / 2 (so the step-end tokens' scores are known)."""

    def forward(self, input_ids, attention_mask):
        return ((input_ids.float() - 7) / 2)[..., None]


def test_process_model_scores_sit_on_step_ends(tokenizer):
    _, batch = group(tokenizer)
    steps = StepRewards(tokenizer, [",", ";"], model=LearnedStepReward(StepScore(), pad_token_id=0))
    rewards, mask, _ = steps(batch)
    p = int(batch.prompt_lengths[0])
    for i in range(3):
        ends = mask[i].nonzero().flatten()
        tokens = batch.tokens[i, ends + 1]  # target position t holds token t + 1: the step's last token
        assert torch.allclose(rewards[i, ends], torch.sigmoid((tokens.float() - 7) / 2))
        assert (ends >= p - 1).all()
    assert mask.sum() == 8
