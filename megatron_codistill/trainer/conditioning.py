"""Reference-conditioned ("ghost response") KD (DESIGN §2):
r_it = log pi_T(o_it | q, y*, o_<t) - log pi_S(o_it | q, o_<t).

The large model scores each small rollout o_i a second time, after a context that shows it a reference
solution y* of the prompt (`algorithm.kd_context`, e.g. "Reference solution:\\n{reference}\\n\\n{prompt}");
the small model's log-probs stay those without it. y* is the gold solution of the training row
(`kd_reference: gold`) or one of `kd_teacher_samples` samples of the large model itself that the verifier
judged correct (`teacher`; a prompt with no correct sample keeps the plain teacher). The conditioned
log-probs [N, T-1] are moved back to the rollout's layout (`algo.align_responses`) and replace l^L in the
small model's KD term only: the large model's own update keeps its unconditioned log-probs.

Legend: N rollouts of the global batch, B = N / G prompts, T tokens.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch
import torch.distributed as dist

from megatron_codistill import algo
from megatron_codistill.rollout.base import Rollout, RolloutBatch
from megatron_codistill.trainer.exchange import all_gather_rows, row_slice, take_rows

_FIELD = re.compile(r"\{(prompt|reference)\}")


class ContextTemplate:
    """The teacher's context around a prompt: literal text, `{reference}` and `{prompt}`, once each.

    The prompt enters as the rollout's own token ids and the reference as token ids; only the literal text
    between them is tokenised (without special tokens), so the teacher sees exactly the student's prompt.
    Example, template "{reference};{prompt}" with a character tokenizer: prompt ids [5, 6], reference ids
    [7] -> [7, id(";"), 5, 6].
    """

    def __init__(self, template: str, encode: Callable[[str], list[int]], *, what: str = "algorithm.kd_context"):
        names = _FIELD.findall(template)
        if sorted(names) != ["prompt", "reference"]:
            raise ValueError(f"{what} must hold {{prompt}} and {{reference}} once each, got {template!r}")
        parts = _FIELD.split(template)  # [text, name, text, name, text]
        self.order = parts[1::2]
        self.texts: list[list[int]] = []
        for text in parts[0::2]:
            try:
                ids = encode(text) if text else []
            except Exception as e:  # noqa: BLE001 - tokenizers raise their own types
                raise ValueError(f"{what}: the tokenizer cannot encode {text!r} ({e}); use characters it has") from None
            self.texts.append(list(ids))

    def build(self, prompt_ids: list[int], reference_ids: list[int]) -> list[int]:
        """Context token ids: the template with the two fields filled."""
        fill = {"prompt": list(prompt_ids), "reference": list(reference_ids)}
        out = list(self.texts[0])
        for name, text in zip(self.order, self.texts[1:]):
            out += fill[name] + text
        return out


def problems_by_prompt(problems) -> dict[tuple[int, ...], object]:
    """{prompt token ids: the first training problem with them}: how a rollout finds its gold and answer."""
    index: dict[tuple[int, ...], object] = {}
    for p in problems:
        index.setdefault(tuple(p.prompt_ids), p)
    return index


def group_prompts(batch: RolloutBatch) -> list[list[int]]:
    """[B] prompt token ids of each group of the batch (from its first row)."""
    G = batch.group_size
    return [batch.tokens[g * G, : int(batch.prompt_lengths[g * G])].tolist() for g in range(batch.num_groups)]


def lookup(index: dict, prompt: list[int], what: str):
    problem = index.get(tuple(prompt))
    if problem is None:
        raise ValueError(f"{what}: a rollout's prompt ({len(prompt)} tokens) is none of the training problems' "
                         "prompts (was it cut by rollout.prompt_overflow?)")
    return problem


class Conditioner:
    """Scores a batch with the large model after a reference-bearing context (collective over all ranks)."""

    def __init__(self, run) -> None:
        a = run.cfg.algorithm
        self.source, self.samples = a.kd_reference, a.kd_teacher_samples
        self.encode = lambda t: run.tokenizer.encode(t, add_special_tokens=False)
        self.template = ContextTemplate(a.kd_context, self.encode)
        self.index = problems_by_prompt(run.prompts.problems)
        if self.source == "gold":
            missing = [i for i, p in enumerate(run.prompts.problems) if not p.solution]
            if missing:
                raise ValueError(f"algorithm.kd_reference=gold: {len(missing)} of {len(run.prompts.problems)} "
                                 f"problems of {run.cfg.data.train} have no gold solution (first: row {missing[0]}); "
                                 f"the {run.cfg.data.preset!r} preset reads it from its solution field")
        self.engine, self._engine_state, self._synced = None, None, False

    # ---------------------------------------------------------------- references y*

    def references(self, run, batch: RolloutBatch) -> list[list[int] | None]:
        """[B] reference token ids of each group's prompt (None: none found), the same on every rank."""
        prompts = group_prompts(batch)
        problems = [lookup(self.index, p, f"algorithm.kd_reference={self.source}") for p in prompts]
        if self.source == "gold":
            return [self.encode(p.solution) for p in problems]
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        mine = row_slice(len(prompts), 1, rank, world)  # B = prompts_per_step, a multiple of the world size
        found = self._teacher_samples(run, prompts[mine], problems[mine])
        if world == 1:
            return found
        parts: list = [None] * world
        dist.all_gather_object(parts, found)
        return [ref for refs in parts for ref in refs]

    def _teacher_samples(self, run, prompts: list[list[int]], problems: list) -> list[list[int] | None]:
        """First of `kd_teacher_samples` large-model samples per prompt the verifier accepts (stop tokens cut)."""
        engine = self._teacher_engine(run)
        groups = engine.generate(prompts, self.samples, run.sampling) if prompts else []
        texts = [run.decode(r.response_ids) for g in groups for r in g]
        scores = run.reward(texts, [p.reference for p in problems for _ in range(self.samples)]) if texts else []
        stop = set(run.sampling.stop_token_ids)
        out: list[list[int] | None] = []
        for b, g in enumerate(groups):
            ok = [r for k, r in enumerate(g) if scores[b * self.samples + k] >= run.cfg.reward.correct]
            ids = list(ok[0].response_ids) if ok else None
            while ids and ids[-1] in stop:
                ids.pop()
            out.append(ids)
        return out

    def _teacher_engine(self, run):
        """The large model's embedded engine, holding its current weights (synced when they change)."""
        from megatron_codistill.trainer.engines import embedded_engine, sync_engine

        policy = run.policies["large"]
        r = dataclasses.replace(run.cfg.rollout, weight_sync="direct", verify_sync=False)
        if self.engine is None:
            rank = dist.get_rank() if dist.is_initialized() else 0
            world = dist.get_world_size() if dist.is_initialized() else 1
            self.engine = embedded_engine(policy, r, pad_id=run.pad_id, seed=run.cfg.run.seed * 1000 + world + rank)
            if self._engine_state is not None:
                self.engine.set_rng_state(self._engine_state)
        if policy.trainable or not self._synced:  # collective: every rank calls it
            sync_engine(self.engine, policy, r, version=run.engine_version, run_dir=run.cfg.run.dir)
            self._synced = True
        return self.engine

    # ---------------------------------------------------------------- conditioned scores

    def conditioned_batch(self, batch: RolloutBatch, refs: list[list[int] | None], pad_id: int) -> RolloutBatch:
        """Every rollout after its group's context (the bare prompt where there is no reference)."""
        G, rows = batch.group_size, []
        for i in range(batch.tokens.shape[0]):
            p, q = int(batch.prompt_lengths[i]), int(batch.response_lengths[i])
            prompt, response = batch.tokens[i, :p].tolist(), batch.tokens[i, p : p + q].tolist()
            ref = refs[i // G]
            ctx = prompt if ref is None else self.template.build(prompt, ref)
            rows.append(Rollout(ctx, response, [0.0] * q, "stop"))
        return RolloutBatch.from_rollouts([rows[g : g + G] for g in range(0, len(rows), G)], pad_id)

    def teacher_logprobs(self, run, batch: RolloutBatch, plain: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """l^L_it with y* in context [N, T-1] in the batch's layout (`plain` where a group has no y*), and
        kd/conditioned_minus_plain (token mean over rows with y*), kd/reference_frac (groups with y*)."""
        refs = self.references(run, batch)
        cond = self.conditioned_batch(batch, refs, run.pad_id)
        policy = run.policies["large"]
        longest, limit = int((cond.prompt_lengths + cond.response_lengths).max()), policy.arch.max_position_embeddings
        if longest > limit:
            raise ValueError(f"algorithm.kd_context: a conditioned sequence has {longest} tokens, over the large "
                             f"model's max_position_embeddings ({limit}); shorten the template or the rollouts")
        budget = policy.cfg.micro_batch_tokens
        if budget is not None and longest > budget:
            raise ValueError(f"algorithm.kd_context: a conditioned sequence has {longest} tokens, over "
                             f"large.micro_batch_tokens ({budget}); raise the budget")
        rows = row_slice(cond.tokens.shape[0], cond.group_size, policy.layout.dp_rank, policy.layout.dp)
        part = take_rows(cond, rows)
        lp = policy.logprobs(part.tokens, lengths=part.prompt_lengths + part.response_lengths)
        lp = torch.nn.functional.pad(lp, (0, cond.tokens.shape[1] - 1 - lp.shape[1]))
        full = all_gather_rows(lp, policy.layout.dp_group) if policy.layout.dp > 1 else lp
        aligned = algo.align_responses(full, cond.response_mask, batch.response_mask)
        has = torch.tensor([r is not None for r in refs]).repeat_interleave(batch.group_size)
        out = torch.where(has[:, None], aligned, plain)
        tokens = batch.response_mask * has[:, None].to(batch.response_mask.dtype)
        gap = float(((out - plain) * tokens).sum() / tokens.sum().clamp(min=1))
        return out, {"kd/conditioned_minus_plain": gap, "kd/reference_frac": float(has.float().mean())}

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """The teacher engine's sampling RNG (kd_reference: teacher), so that a resumed run samples the same."""
        state = self.engine.rng_state() if self.engine is not None else self._engine_state
        return {"teacher_engine_rng": state}

    def load_state_dict(self, state: dict) -> None:
        self._engine_state = state.get("teacher_engine_rng")
        if self.engine is not None and self._engine_state is not None:
            self.engine.set_rng_state(self._engine_state)
        self._synced = False
