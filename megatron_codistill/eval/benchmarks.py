"""The benchmarks `codistill eval` knows: where their file sits under a data directory, and how to read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    """Path of the test file relative to the data directory."""
    preset: str
    """Field preset of `megatron_codistill.data`."""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gsm8k", "gsm8k/test.jsonl", "gsm8k"),
        Benchmark("math500", "math500/test.jsonl", "math"),
        Benchmark("minerva", "minerva_math/test.jsonl", "minerva"),
    )
}


def parse_benchmarks(spec: str | list[str]) -> list[Benchmark]:
    """"gsm8k,math500" (or a list of names) -> benchmarks; ValueError listing the valid names."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ValueError(f"no benchmark given; valid names: {sorted(BENCHMARKS)}")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; valid names: {sorted(BENCHMARKS)}")
    return [BENCHMARKS[n] for n in dict.fromkeys(names)]


def benchmark_file(benchmark: Benchmark, data_dir: str | Path) -> Path:
    """The benchmark's test file; ValueError saying where it was looked for when absent."""
    path = Path(data_dir) / benchmark.file
    if not path.is_file():
        raise ValueError(f"benchmark {benchmark.name!r}: {path} not found (expected {benchmark.file} under "
                         f"--data-dir {str(data_dir)!r})")
    return path
