"""Evaluate a rollout engine on math benchmarks: greedy accuracy, pass@k and maj@k.

Every benchmark file is read and validated first (a bad row stops the evaluation before any
generation). Then for each benchmark: render the prompts with a template, generate a greedy response
per problem (and n sampled ones when n > 1), score them with the math reward in verifier processes,
append one JSONL record per sample to `<out>/<name>/samples.jsonl`, and summarise into
`<out>/<name>/summary.{json,md}`; `<out>/summary.{json,md}` hold every benchmark's row. Samples already
stored are skipped, so a rerun of an interrupted evaluation finishes it.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_codistill.data import build_prompts
from megatron_codistill.eval.benchmarks import DEFAULT_BENCHMARKS, parse_benchmarks
from megatron_codistill.eval.metrics import Equivalent
from megatron_codistill.eval.records import SampleStore
from megatron_codistill.eval.summary import markdown_table, summarise
from megatron_codistill.log import get_logger
from megatron_codistill.rewards import VerifierPool, verify_batch
from megatron_codistill.rollout.base import RolloutEngine, SamplingParams

log = get_logger(__name__)

SAMPLES_FILE, SUMMARY_MD, SUMMARY_JSON = "samples.jsonl", "summary.md", "summary.json"
SETTINGS_FILE = "eval.json"
RESUME_MUST_MATCH = ("model", "template", "temperature", "top_p", "max_new_tokens", "seed", "stop_token_ids")


@dataclass
class EvalSettings:
    """What to evaluate and how (every field is a `codistill eval` option)."""

    benchmarks: list[str] = field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    """Preset names or `NAME=PATH[:problem_field:answer_field]` specs (`eval.benchmarks`)."""
    data_dir: str = "data"
    """Directory holding the presets' usual files (gsm8k/test.jsonl, math500/test.jsonl, ...)."""
    out_dir: str = "eval_out"
    model: str = ""
    """Recorded with the results (a rerun must use the same model to resume)."""
    n: int = 1
    """Sampled responses per problem for pass@k / maj@k (1: greedy only)."""
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 1024
    limit: int | None = None
    """Evaluate the first `limit` problems of each benchmark."""
    template: str = "boxed"
    batch_size: int = 16
    """Problems per generate call (and per durable write)."""
    seed: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    reward_workers: int = 2
    reward_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        parse_benchmarks(self.benchmarks)
        if self.n < 1:
            raise ValueError(f"n ({self.n}) must be >= 1")
        if self.n > 1 and self.temperature <= 0:
            raise ValueError(f"n = {self.n} samples need temperature > 0 (got {self.temperature})")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"batch_size ({self.batch_size}) and limit ({self.limit}) must be >= 1")


def _check_resume(settings: EvalSettings, out: Path) -> None:
    path = out / SETTINGS_FILE
    mine = asdict(settings)
    if path.exists():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), mine[k]) for k in RESUME_MUST_MATCH if before.get(k) != mine[k]}
        if diff:
            raise ValueError(f"{out} holds an evaluation with other settings {diff} (stored, asked); "
                             "use another --out directory or the same settings")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=2))


def _generate_and_score(
    engine, tokenizer, pool, bench: str, todo: list, mode: str, settings: EvalSettings
) -> list[dict]:
    """Records of the (problem, first sample id, count) in `todo`, generated and scored."""
    greedy = mode == "greedy"
    first = todo[0][0].example.index
    seed = (settings.seed * 1_000_003 + zlib.crc32(f"{bench}:{mode}".encode()) + first) % 2**31
    sampling = SamplingParams(
        temperature=0.0 if greedy else settings.temperature, top_p=1.0 if greedy else settings.top_p,
        max_new_tokens=settings.max_new_tokens, stop_token_ids=tuple(settings.stop_token_ids), seed=seed,
    )
    records = []
    for count in sorted({c for _, _, c in todo}):  # generate() takes one n per call
        batch = [(p, s) for p, s, c in todo if c == count]
        groups = engine.generate([p.ids for p, _ in batch], count, sampling)
        for (p, start), group in zip(batch, groups):
            for j, rollout in enumerate(group):
                records.append({
                    "benchmark": bench, "problem": p.example.index, "mode": mode, "sample": start + j,
                    "question": p.example.question, "reference": p.example.answer,
                    "response": tokenizer.decode(rollout.response_ids, skip_special_tokens=True),
                    "response_tokens": len(rollout.response_ids), "finish_reason": rollout.finish_reason,
                })
    results = verify_batch([r["response"] for r in records], [r["reference"] for r in records], pool=pool)
    for r, res in zip(records, results):
        r.update(score=res.score, reason=res.reason, extracted=res.extracted)
    return records


def pool_equivalence(pool: VerifierPool) -> Equivalent:
    """Answer equivalence for maj@k: `a` verified against `b` as the reference, in the pool's workers."""
    def equivalent(pairs: list[tuple[str, str]]) -> list[bool]:
        results = verify_batch([f"<answer>{a}</answer>" for a, _ in pairs], [b for _, b in pairs], pool=pool)
        return [r.score >= 1.0 for r in results]

    return equivalent


def evaluate(engine: RolloutEngine, tokenizer, settings: EvalSettings, *, pool: VerifierPool | None = None
             ) -> list[dict]:
    """Run (or finish) the evaluation; returns one summary dict per benchmark and writes the samples and
    summaries under `settings.out_dir` (see the module doc)."""
    out = Path(settings.out_dir)
    benchmarks = parse_benchmarks(settings.benchmarks)
    # every file read, validated and rendered before any generation
    rendered = {b.name: build_prompts(b.load(settings.data_dir, limit=settings.limit), settings.template, tokenizer)
                for b in benchmarks}
    _check_resume(settings, out)
    own_pool = pool is None
    pool = pool or VerifierPool(settings.reward_workers, settings.reward_timeout_s)
    summaries = []
    try:
        for bench in benchmarks:
            store = SampleStore(out / bench.name / SAMPLES_FILE)
            prompts = rendered[bench.name]
            modes = [("greedy", 1)] + ([("sampled", settings.n)] if settings.n > 1 else [])
            for mode, want in modes:
                todo = [(p, have, want - have) for p in prompts
                        if (have := store.count(bench.name, p.example.index, mode)) < want]
                log.info("eval %s %s: %d of %d problems to do", bench.name, mode, len(todo), len(prompts))
                for i in range(0, len(todo), settings.batch_size):
                    chunk = todo[i : i + settings.batch_size]
                    records = _generate_and_score(engine, tokenizer, pool, bench.name, chunk, mode, settings)
                    store.append(records)
            summary = summarise(store, bench.name, [p.example.index for p in prompts], settings.n,
                                pool_equivalence(pool))
            (out / bench.name / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
            (out / bench.name / SUMMARY_MD).write_text(markdown_table([summary], title=bench.name))
            summaries.append(summary)
    finally:
        if own_pool:
            pool.close()
    (out / SUMMARY_JSON).write_text(json.dumps(summaries, indent=2))
    (out / SUMMARY_MD).write_text(markdown_table(summaries, title=f"{settings.model or 'model'}"))
    return summaries
