"""Benchmark evaluation of a rollout engine: GSM8K, MATH-500 and Minerva; greedy accuracy, pass@k,
maj@k; per-sample JSONL that a rerun resumes; a markdown summary. CLI: `codistill eval`."""

from megatron_codistill.eval.benchmarks import BENCHMARKS, Benchmark, parse_benchmarks
from megatron_codistill.eval.metrics import majority_correct, pass_at_k

__all__ = ["BENCHMARKS", "Benchmark", "majority_correct", "parse_benchmarks", "pass_at_k"]
