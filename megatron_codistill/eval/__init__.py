"""Benchmark evaluation of a rollout engine: presets (GSM8K, MATH-500, Minerva, AIME 2024, AMC 2023,
OlympiadBench) and any file as `NAME=PATH[:problem_field:answer_field]`; greedy accuracy, pass@k, maj@k
over verified-equivalent answers; per-sample JSONL that a rerun resumes; markdown summaries.
CLI: `codistill eval`."""

from megatron_codistill.eval.benchmarks import BENCHMARKS, Benchmark, parse_benchmark, parse_benchmarks
from megatron_codistill.eval.metrics import majority_correct, majority_votes, pass_at_k

__all__ = ["BENCHMARKS", "Benchmark", "majority_correct", "majority_votes", "parse_benchmark", "parse_benchmarks",
           "pass_at_k"]
