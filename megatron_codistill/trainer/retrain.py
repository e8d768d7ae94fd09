"""Learned reward models of a run and iterative RL (DeepSeekMath §4.2): every `reward.retrain.every` steps
the reward model in use is trained, inside the job, on the rollouts since its last round labelled by the
verifier, with a fraction `replay_frac` of older labelled rollouts; optionally the KL reference of every
trained model is then reset to its current weights.

- outcome model (`reward.kind: model`): one label per rollout, 1 when the verifier's reward reaches
  `reward.correct`; binary cross-entropy on the sequence score (log-odds).
- process model (`algorithm.supervision: process` with `reward.process_model`): one label per step from the
  exact step checker (gold steps), cross-entropy on the score at each step's last token.

The model is replicated: every rank collects the same global batch and trains the same copy; rank 0's
weights are then broadcast so that replicas cannot drift. The model, its Adam state, the replay buffer and
the sampling RNG are checkpointed (`objective_state`), so a resumed run retrains exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from megatron_codistill.config import RetrainConfig
from megatron_codistill.log import get_logger
from megatron_codistill.rewards.learned import as_logits, pad_batch
from megatron_codistill.rollout.base import RolloutBatch
from megatron_codistill.trainer.task_reward import StepRewards, sequences

log = get_logger(__name__)


@dataclass
class Example:
    """One labelled rollout: token ids (prompt + response) and its label(s)."""

    ids: list[int]
    labels: list[float]
    """[1] for an outcome model; one per step for a process model."""
    positions: list[int]
    """Process model: the index in `ids` of each step's last token; empty for an outcome model."""


class Retrainer:
    """Collects labelled rollouts each step and trains `model` every `cfg.every` steps.

    kind: "outcome" or "process"; labeller: the exact step checker (process); correct: the verifier's reward
    of a correct answer (outcome labels are reward >= correct).
    """

    def __init__(self, model, *, kind: str, cfg: RetrainConfig, seed: int, pad_token_id: int,
                 labeller: StepRewards | None = None, correct: float = 1.0) -> None:
        if kind not in ("outcome", "process"):
            raise ValueError(f"reward model kind {kind!r} is not one of ['outcome', 'process']")
        if kind == "process" and labeller is None:
            raise ValueError("a process reward model is retrained on exact step labels: give a labeller")
        self.model, self.kind, self.cfg, self.pad_token_id = model, kind, cfg, pad_token_id
        self.labeller, self.correct = labeller, correct
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(seed)
        self.fresh: list[Example] = []
        self.old: list[Example] = []

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    # ---------------------------------------------------------------- data

    def examples(self, batch: RolloutBatch, correct: torch.Tensor) -> list[Example]:
        """The batch's rollouts labelled by the verifier (outcome) or the exact step checker (process)."""
        seqs = sequences(batch)
        if self.kind == "outcome":
            return [Example(s, [float(c >= self.correct)], []) for s, c in zip(seqs, correct.tolist())]
        out = []
        for i, s in enumerate(seqs):
            steps = self.labeller.steps(batch, i)
            p = int(batch.prompt_lengths[i])
            out.append(Example(s, self.labeller.exact_labels(batch, i, steps), [p + st.end for st in steps]))
        return out

    def collect(self, batch: RolloutBatch, correct: torch.Tensor) -> None:
        """Keep the step's labelled rollouts for the next round (every rank, the same global batch)."""
        self.fresh += [e for e in self.examples(batch, correct) if e.labels]

    def _logits(self, chunk: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, labels) of a list of examples: [b] outcome, or [steps] process; scores with gradient."""
        ids, mask = pad_batch([e.ids for e in chunk], self.pad_token_id)
        out = self.model(input_ids=ids, attention_mask=mask)
        labels = torch.tensor([y for e in chunk for y in e.labels])
        if self.kind == "outcome":
            return as_logits(out, (len(chunk),)), labels
        scores = as_logits(out, tuple(ids.shape))
        rows = torch.tensor([i for i, e in enumerate(chunk) for _ in e.positions], dtype=torch.long)
        cols = torch.tensor([p for e in chunk for p in e.positions], dtype=torch.long)
        return scores[rows, cols], labels

    def accuracy(self, examples: list[Example]) -> float:
        """Fraction of labels the model gets right (score > 0 <=> label 1)."""
        if not examples:
            return float("nan")
        self.model.eval()
        right = total = 0
        with torch.no_grad():
            for start in range(0, len(examples), self.cfg.batch_size):
                scores, labels = self._logits(examples[start : start + self.cfg.batch_size])
                right += int(((scores > 0) == (labels > 0.5)).sum())
                total += labels.numel()
        return right / max(total, 1)

    # ---------------------------------------------------------------- one round

    def round(self) -> dict[str, float]:
        """Train on the fresh examples plus replay; move them to the replay buffer. Round metrics."""
        fresh, c = self.fresh, self.cfg
        if not fresh:
            return {}
        want = round(len(fresh) * c.replay_frac / (1.0 - c.replay_frac)) if c.replay_frac > 0 else 0
        n_old = min(len(self.old), want)
        pick = torch.randperm(len(self.old), generator=self.generator)[:n_old].tolist()
        data = fresh + [self.old[i] for i in sorted(pick)]
        heldout = self.accuracy(fresh)  # on rollouts it has never been trained on
        self.model.train()
        losses = []
        # dropout (HF classification heads default to 0.1) draws from a stream of the retrainer's own generator:
        # the round is reproducible on resume and leaves the run's global RNG alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
            for _ in range(c.epochs):
                order = torch.randperm(len(data), generator=self.generator).tolist()
                losses = []
                for start in range(0, len(data), c.batch_size):
                    scores, labels = self._logits([data[i] for i in order[start : start + c.batch_size]])
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    losses.append(loss.item())
        self.model.eval()
        _broadcast(self.model)
        self.old = (self.old + fresh)[-c.buffer_size :] if c.buffer_size > 0 else []
        self.fresh = []
        return {"retrain/heldout_accuracy": heldout, "retrain/train_accuracy": self.accuracy(data),
                "retrain/loss": sum(losses) / max(len(losses), 1), "retrain/examples": float(len(data)),
                "retrain/replay_examples": float(n_old), "retrain/buffer": float(len(self.old))}

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "fresh": [asdict(e) for e in self.fresh], "old": [asdict(e) for e in self.old]}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.fresh = [Example(**e) for e in state["fresh"]]
        self.old = [Example(**e) for e in state["old"]]


def _broadcast(model) -> None:
    """Rank 0's weights on every rank (the replicas trained identically; this rules out any drift)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for p in model.state_dict().values():
            dist.broadcast(p, src=0)


# ---------------------------------------------------------------- the run's hooks


def build_reward_models(run) -> None:
    """Attach the learned parts of the reward to `run` (collective only in what they later do):
    run.task_model (reward.kind: model), run.step_rewards (supervision: process), run.retrainer."""
    from megatron_codistill.rewards.learned import LearnedStepReward, load_reward_model
    from megatron_codistill.trainer.conditioning import problems_by_prompt
    from megatron_codistill.trainer.task_reward import ModelTaskReward

    cfg, r = run.cfg, run.cfg.reward
    a, vocab, pad = cfg.algorithm, len(run.tokenizer), run.pad_id
    load = lambda path, head, what: load_reward_model(path, head=head, seed=cfg.run.seed + 3,  # noqa: E731
                                                      vocab_size=vocab, pad_token_id=pad, what=what)
    # the exact step checker: the step rewards themselves, or the labels a process model is retrained on
    exact = None
    if a.supervision == "process" and (not r.process_model or r.retrain.every):
        exact = StepRewards(run.tokenizer, a.step_delimiters, index=problems_by_prompt(run.prompts.problems))
    trained, kind = None, None
    if r.kind == "model":
        trained, kind = load(r.model, "sequence", "reward.model"), "outcome"
        run.task_model = ModelTaskReward(trained, pad_token_id=pad, correct=r.correct)
    if a.supervision == "process":
        if r.process_model:
            trained, kind = load(r.process_model, "token", "reward.process_model"), "process"
            run.step_rewards = StepRewards(run.tokenizer, a.step_delimiters,
                                           model=LearnedStepReward(trained, pad_token_id=pad))
        else:
            run.step_rewards = exact
    if r.retrain.every:
        run.retrainer = Retrainer(trained, kind=kind, cfg=r.retrain, seed=cfg.run.seed + 4, pad_token_id=pad,
                                  labeller=exact, correct=r.correct)


def after_step(run, step: int) -> dict[str, float]:
    """The loop's hook after RL step `step`: a retraining round when one is due (and the reference reset)."""
    if run.retrainer is None or not run.retrainer.due(step):
        return {}
    metrics = run.retrainer.round()
    if run.cfg.reward.retrain.reset_reference:
        for policy in run.policies.values():
            if policy.reference is not None:
                policy.reset_reference()
    log.info("step %d: reward model retrained (%s)", step,
             ", ".join(f"{k.removeprefix('retrain/')} {v:.3g}" for k, v in metrics.items()))
    return metrics


def objective_state(run) -> dict:
    """This rank's state of the reward models and the conditioned teacher, for the checkpoint."""
    state = {}
    if getattr(run, "retrainer", None) is not None:
        state["retrainer"] = run.retrainer.state_dict()
    if getattr(run, "conditioner", None) is not None:
        state["conditioner"] = run.conditioner.state_dict()
    return state


def load_objective_state(run, state: dict | None, *, same_ranks: bool = True) -> None:
    """Restore `objective_state`; ValueError when the checkpoint lacks a part this run needs. At another world
    size (`same_ranks` False, `state` is rank 0's) the replicated reward model still loads; the per-rank
    teacher-engine RNG does not carry over (the engine keeps the generator it is built with)."""
    state = state or {}
    for name in ("retrainer", "conditioner"):
        part = getattr(run, name, None)
        if part is None or (name == "conditioner" and not same_ranks):
            continue
        if name not in state:
            raise ValueError(f"the checkpoint has no {name} state, which this run needs (reward.retrain / "
                             "algorithm.kd_reference changed since it was saved?); use a new run.dir")
        part.load_state_dict(state[name])
