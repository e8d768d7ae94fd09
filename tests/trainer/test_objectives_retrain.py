"""Iterative RL: the reward model retrained on verifier-labelled rollouts gets better on held-out rollouts,
draws its replay from older data, and resumes bitwise from its state_dict."""

import io
import random
from pathlib import Path

import pytest
import torch

from megatron_codistill.config import RetrainConfig
from megatron_codistill.data.arith import make_problem
from megatron_codistill.rewards.arith import score_arith
from megatron_codistill.rewards.learned import load_reward_model
from megatron_codistill.rollout.base import Rollout, RolloutBatch
from megatron_codistill.trainer.conditioning import problems_by_prompt
from megatron_codistill.trainer.prompts import Problem
from megatron_codistill.trainer.retrain import Retrainer
from megatron_codistill.trainer.task_reward import StepRewards

ROOT = Path(__file__).resolve().parents[2] / "examples" / "tiny_cpu"
G = 4


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ROOT / "tokenizer"))


def rollouts(tokenizer, seed: int, n_prompts: int = 12):
    """Groups of G responses per problem: the gold solution or a cut-off one; verifier rewards [N]."""
    rng = random.Random(seed)
    problems, groups, texts, refs = [], [], [], []
    for _ in range(n_prompts):
        row = make_problem(rng, 3)
        p = Problem(tokenizer.encode(row["prompt"], add_special_tokens=False), row["prompt"], row["answer"],
                    row["solution"])
        problems.append(p)
        group = []
        for _ in range(G):
            text = row["solution"] if rng.random() < 0.5 else row["solution"][: rng.randrange(3, 18)]
            ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
            group.append(Rollout(p.prompt_ids, ids, [0.0] * len(ids), "stop"))
            texts.append(text)
            refs.append(row["answer"])
        groups.append(group)
    batch = RolloutBatch.from_rollouts(groups, tokenizer.pad_token_id)
    return problems, batch, torch.tensor(score_arith(texts, refs))


def retrainer(tokenizer, kind="outcome", problems=(), seed=0, **cfg):
    c = RetrainConfig(**{"every": 1, "replay_frac": 0.25, "batch_size": 16, "lr": 3e-3, "epochs": 2, **cfg})
    model = load_reward_model(str(ROOT / "reward_models" / kind), head="sequence" if kind == "outcome" else "token",
                              seed=seed, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, what="test")
    labeller = None
    if kind == "process":
        labeller = StepRewards(tokenizer, [",", ";"], index=problems_by_prompt(list(problems)))
    return Retrainer(model, kind=kind, cfg=c, seed=7, pad_token_id=tokenizer.pad_token_id, labeller=labeller)


def rounds(rt, tokenizer, seeds, heldout):
    out = []
    for s in seeds:
        _, batch, correct = rollouts(tokenizer, s)
        rt.collect(batch, correct)
        m = rt.round()
        out.append({**m, "heldout": rt.accuracy(heldout)})
    return out


def test_outcome_model_learns_the_verifier_labels(tokenizer):
    _, hb, hc = rollouts(tokenizer, 999, n_prompts=16)
    rt = retrainer(tokenizer)
    heldout = rt.examples(hb, hc)
    assert 0.3 < sum(e.labels[0] for e in heldout) / len(heldout) < 0.7  # both labels well represented
    start = rt.accuracy(heldout)
    history = rounds(rt, tokenizer, [1, 2, 3, 4, 5], heldout)
    assert start < 0.6 and history[-1]["heldout"] > 0.9, (start, history)
    # each round trains on its fresh rollouts plus replay: replay_frac 0.25 of 48 fresh -> 16 old ones
    assert [h["retrain/replay_examples"] for h in history] == [0.0, 16.0, 16.0, 16.0, 16.0]
    assert [h["retrain/examples"] for h in history] == [48.0, 64.0, 64.0, 64.0, 64.0]
    assert history[-1]["retrain/heldout_accuracy"] > history[0]["retrain/heldout_accuracy"]


def test_process_model_learns_exact_step_labels(tokenizer):
    problems = []
    for s in (1, 2, 3, 4, 999):
        problems += rollouts(tokenizer, s)[0]
    hp, hb, hc = rollouts(tokenizer, 999)
    rt = retrainer(tokenizer, "process", problems)
    heldout = rt.examples(hb, hc)
    # labels: every step of a gold response is right; a cut-off response's last (partial) step is wrong
    assert all(len(e.labels) == len(e.positions) > 0 for e in heldout)
    labels = [y for e in heldout for y in e.labels]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)  # what a constant guess gets
    history = rounds(rt, tokenizer, [1, 2, 3, 4], heldout)
    assert history[-1]["heldout"] > majority + 0.04, (majority, history)


def _state_bytes(rt) -> bytes:
    buf = io.BytesIO()
    torch.save(rt.state_dict(), buf)
    return buf.getvalue()


def test_resume_from_state_dict_is_bitwise(tokenizer):
    _, hb, hc = rollouts(tokenizer, 999)
    full = retrainer(tokenizer)
    heldout = full.examples(hb, hc)
    straight = rounds(full, tokenizer, [1, 2], heldout)
    saved = _state_bytes(full)
    straight += rounds(full, tokenizer, [3, 4], heldout)
    _, batch, correct = rollouts(tokenizer, 5)
    full.collect(batch, correct)  # fresh examples pending at the save are part of the state too
    pending = _state_bytes(full)

    resumed = retrainer(tokenizer, seed=123)  # other initial weights: all of them must come from the state
    resumed.load_state_dict(torch.load(io.BytesIO(saved), weights_only=False))
    torch.manual_seed(999)  # the rounds draw (dropout too) from the retrainer's own checkpointed generator
    again = rounds(resumed, tokenizer, [3, 4], heldout)
    assert again == straight[2:]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    resumed.collect(batch, correct)
    assert _state_bytes(resumed) == pending


@pytest.mark.parametrize("knob, value", [("replay_frac", 0.0), ("buffer_size", 8), ("epochs", 1),
                                         ("batch_size", 8), ("lr", 1e-3)])
def test_every_retrain_knob_changes_the_trained_model(tokenizer, knob, value):
    _, hb, hc = rollouts(tokenizer, 999)
    base, flipped = retrainer(tokenizer), retrainer(tokenizer, **{knob: value})
    heldout = base.examples(hb, hc)
    a, b = rounds(base, tokenizer, [1, 2, 3], heldout), rounds(flipped, tokenizer, [1, 2, 3], heldout)
    assert a[-1]["retrain/loss"] != b[-1]["retrain/loss"]
    if knob in ("replay_frac", "buffer_size"):
        assert a[-1]["retrain/replay_examples"] == 16.0 and b[-1]["retrain/replay_examples"] < 16.0


def test_due_every_k_steps(tokenizer):
    rt = retrainer(tokenizer, every=3)
    assert [s for s in range(1, 10) if rt.due(s)] == [3, 6, 9]
    assert retrainer(tokenizer).round() == {}  # nothing collected: no round
