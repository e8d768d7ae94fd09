"""Reference-conditioned KD: d_it = log pi_L(o_it | q, y*, o_<t) - log pi_S(o_it | q, o_<t) from the trainer
(large TP=1, and TP=2 on 2 gloo ranks) equals a single-process Hugging Face computation that writes the
template as text with the gold (or the chosen teacher sample) in it and tokenises it whole."""

import pytest
import torch

from megatron_codistill import algo
from megatron_codistill.config import load_config
from tests.distributed import run_distributed
from tests.trainer.conftest import FAST, TINY

TEMPLATE = "{reference};{prompt}"
COMMON = [*FAST, "warm_start.small_steps=0", "warm_start.large_steps=0", "run.eval_every=0",
          f"algorithm.kd_context='{TEMPLATE}'"]


def even_length(responses, references, **_):
    """A verifier random models pass half the time: 1 for an even number of characters."""
    return [float(len(r) % 2 == 0) for r in responses]


def _trainer_side(run_dir: str, overrides: list[str], sources=("",)):
    """Build the run, sample a global batch, and compute plain and conditioned teacher log-probs and d, for
    each kd_reference of `sources` ("" = the configured one)."""
    from megatron_codistill.rollout.base import RolloutBatch
    from megatron_codistill.trainer.build import build_run
    from megatron_codistill.trainer.conditioning import Conditioner
    from megatron_codistill.trainer.exchange import gather_batch

    run = build_run(load_config(TINY, [f"run.dir={run_dir}", *COMMON, *overrides]))
    problems = run.prompts.next_batch()
    local = RolloutBatch.from_rollouts(run.engine.generate([p.prompt_ids for p in problems], 4, run.sampling),
                                       run.pad_id)
    batch = gather_batch(local, run.pad_id)
    lengths = batch.prompt_lengths + batch.response_lengths
    small = run.policies["small"].logprobs(batch.tokens, lengths=lengths)  # DP replica: every rank all rows
    large = run.policies["large"].logprobs(batch.tokens, lengths=lengths)
    weights = {name: {k: v.clone() for b in p.export_hf(1 << 30) for k, v in b} for name, p in run.policies.items()}
    outs = []
    for source in sources:
        run.cfg.algorithm.kd_reference = source or run.cfg.algorithm.kd_reference
        cond = Conditioner(run)
        seen = {}
        references = cond.references
        cond.references = lambda *a, f=references, seen=seen: seen.setdefault("refs", f(*a))
        conditioned, metrics = cond.teacher_logprobs(run, batch, large)
        d = algo.kd_log_ratio(conditioned, small, batch.response_mask)
        solutions = [cond.index[tuple(batch.tokens[g * 4, : int(batch.prompt_lengths[g * 4])].tolist())].solution
                     for g in range(batch.num_groups)]
        outs.append({"batch": batch, "d": d, "metrics": metrics, "weights": weights, "refs": seen["refs"],
                     "solutions": solutions, "arch": {k: p.arch for k, p in run.policies.items()}})
    return outs if sources != ("",) else outs[0]


def _hf_reference(out, tokenizer, references: list[str | None]):
    """d per row, and the mean and largest |conditioned - plain| by HF: context text = TEMPLATE.format(...),
    tokenised whole."""
    from transformers import AutoModelForCausalLM

    models = {}
    for name in ("small", "large"):
        m = AutoModelForCausalLM.from_config(out["arch"][name].to_hf_config()).eval()
        m.load_state_dict(out["weights"][name], strict=False)
        models[name] = m

    def response_logprobs(model, context: list[int], response: list[int]) -> torch.Tensor:
        ids = torch.tensor([context + response])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits.float()[0, :-1], -1)
        return lp[torch.arange(len(context) - 1, ids.shape[1] - 1), ids[0, len(context):]]

    batch = out["batch"]
    ds, gaps = [], []
    for i in range(batch.tokens.shape[0]):
        p, q = int(batch.prompt_lengths[i]), int(batch.response_lengths[i])
        prompt, response = batch.tokens[i, :p].tolist(), batch.tokens[i, p : p + q].tolist()
        ref = references[i // batch.group_size]
        plain_large = response_logprobs(models["large"], prompt, response)
        if ref is None:
            large = plain_large
        else:
            context = tokenizer.encode(TEMPLATE.format(reference=ref, prompt=tokenizer.decode(prompt)),
                                       add_special_tokens=False)
            large = response_logprobs(models["large"], context, response)
            gaps.append(large - plain_large)
        ds.append(large - response_logprobs(models["small"], prompt, response))
    gaps = torch.cat(gaps) if gaps else torch.zeros(1)
    return ds, float(gaps.mean()), float(gaps.abs().max())


def _check(out, tokenizer, references):
    batch, d = out["batch"], out["d"]
    ds, gap, largest = _hf_reference(out, tokenizer, references)
    for i, expected in enumerate(ds):
        p, q = int(batch.prompt_lengths[i]), int(batch.response_lengths[i])
        got = d[i, p - 1 : p - 1 + q]
        assert torch.allclose(got, expected, atol=1e-4), (i, got, expected)
        assert float(d[i].abs().sum() - got.abs().sum()) == 0.0  # nothing outside the response
    assert out["metrics"]["kd/conditioned_minus_plain"] == pytest.approx(gap, abs=1e-4)
    assert largest > 1e-2  # the context changes the teacher's scores: the check compares different numbers


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY.parent / "tokenizer"))


def test_gold_in_context_equals_hf_single_process(tmp_path, tokenizer):
    out = _trainer_side(str(tmp_path / "run"), ["algorithm.kd_reference=gold"])
    assert out["metrics"]["kd/reference_frac"] == 1.0
    _check(out, tokenizer, out["solutions"])


def test_teacher_sample_in_context_equals_hf_single_process(tmp_path, tokenizer):
    out = _trainer_side(str(tmp_path / "run"), [
        "algorithm.kd_reference=teacher", "algorithm.kd_teacher_samples=2", "reward.kind=plugin",
        "reward.plugin=tests.trainer.test_objectives_conditioning:even_length"])
    refs = [None if r is None else tokenizer.decode(r) for r in out["refs"]]
    assert any(r is not None for r in refs) and all(r is None or len(r) % 2 == 0 for r in refs)
    assert out["metrics"]["kd/reference_frac"] == sum(r is not None for r in refs) / len(refs)
    _check(out, tokenizer, refs)


def _tp2_worker(run_dir: str):
    return _trainer_side(run_dir, ["large.tensor_parallel=2", "algorithm.kd_reference=teacher",
                                   "algorithm.kd_teacher_samples=2", "reward.kind=plugin",
                                   "reward.plugin=tests.trainer.test_objectives_conditioning:even_length"],
                         sources=("gold", "teacher"))


def test_tp2_two_ranks_equal_hf_single_process(tmp_path, tokenizer):
    r0, r1 = run_distributed(_tp2_worker, 2, str(tmp_path / "run"))
    for a, b in zip(r0, r1):  # the same global result on every rank
        assert torch.equal(a["d"], b["d"]) and a["refs"] == b["refs"]
    gold, teacher = r0
    _check(gold, tokenizer, gold["solutions"])
    # each rank sampled its own prompts' references; they were gathered to both
    refs = [None if r is None else tokenizer.decode(r) for r in teacher["refs"]]
    assert any(r is not None for r in refs)
    _check(teacher, tokenizer, refs)


def test_template_errors_name_the_field(tmp_path, tokenizer):
    from megatron_codistill.trainer.conditioning import ContextTemplate

    encode = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    assert ContextTemplate("{reference};{prompt}", encode).build([5, 6], [7]) == [7, encode(";")[0], 5, 6]
    assert ContextTemplate("{prompt}={reference}", encode).build([5], [7, 8]) == [5, encode("=")[0], 7, 8]
    with pytest.raises(ValueError, match=r"algorithm.kd_context must hold \{prompt\} and \{reference\} once each"):
        ContextTemplate("{prompt}{prompt}{reference}", encode)
    with pytest.raises(ValueError, match=r"algorithm.kd_context: the tokenizer cannot encode 'Reference solution:\\n'"):
        ContextTemplate("Reference solution:\n{reference}\n\n{prompt}", encode)
