"""What `codistill eval` evaluates: named presets and the user's own files.

A benchmark is given as `NAME` (a preset, read from its usual file under --data-dir) or as
`NAME=PATH[:problem_field:answer_field]` (any local jsonl / json / parquet file, or a hub dataset name).
NAME names the outputs (`<out>/<NAME>/...`, the summary rows). A NAME that is a preset reads PATH in
that preset's layout; any other NAME reads the `problem` and `answer` columns (or the last box of
`solution`), unless the two fields are given. Loading goes through `megatron_codistill.data.load_examples`,
the loader the trainer's `data.eval` sets use too.

| preset        | file under --data-dir        | layout (`megatron_codistill.data.presets`)       |
|---------------|------------------------------|--------------------------------------------------|
| gsm8k         | gsm8k/test.jsonl             | openai/gsm8k                                     |
| math500       | math500/test.jsonl           | HuggingFaceH4/MATH-500                           |
| minerva       | minerva_math/test.jsonl      | Minerva math (answer: last box of the solution)  |
| aime24        | aime24/test.jsonl            | HuggingFaceH4/aime_2024, Maxwell-Jia/AIME_2024   |
| amc23         | amc23/test.jsonl             | math-ai/amc23, AI-MO/aimo-validation-amc         |
| olympiadbench | olympiadbench/test.jsonl     | Hothan/OlympiadBench (final_answer list joined)  |

A new preset is one `Benchmark` line here (and, for a new layout, one `FieldPreset` in data/presets.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from megatron_codistill.data import Example, load_examples


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str
    """The file (or hub name); for a preset given by name only, relative to the data directory."""
    preset: str
    """Field preset of `megatron_codistill.data`."""
    prompt_field: str | None = None
    answer_field: str | None = None
    under_data_dir: bool = False
    """Whether `path` is the preset's usual place under --data-dir (not a path the user gave)."""

    def file(self, data_dir: str | Path) -> str:
        return str(Path(data_dir) / self.path) if self.under_data_dir else self.path

    def load(self, data_dir: str | Path, *, limit: int | None = None) -> list[Example]:
        """Every (first `limit`) example, validated; ValueError naming the benchmark, file, line and field."""
        path = self.file(data_dir)
        if self.under_data_dir and not Path(path).is_file():
            raise ValueError(f"benchmark {self.name!r}: {path} not found (expected {self.path} under --data-dir "
                             f"{str(data_dir)!r}); or give the file: --benchmark {self.name}=PATH")
        try:
            return load_examples(path, preset=self.preset, split="test", prompt_field=self.prompt_field,
                                 answer_field=self.answer_field, limit=limit)
        except ValueError as e:
            raise ValueError(f"benchmark {self.name!r}: {e}") from None


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gsm8k", "gsm8k/test.jsonl", "gsm8k", under_data_dir=True),
        Benchmark("math500", "math500/test.jsonl", "math500", under_data_dir=True),
        Benchmark("minerva", "minerva_math/test.jsonl", "minerva", under_data_dir=True),
        Benchmark("aime24", "aime24/test.jsonl", "aime24", under_data_dir=True),
        Benchmark("amc23", "amc23/test.jsonl", "amc23", under_data_dir=True),
        Benchmark("olympiadbench", "olympiadbench/test.jsonl", "olympiadbench", under_data_dir=True),
    )
}
DEFAULT_BENCHMARKS = ("gsm8k", "math500", "minerva")
GENERIC_PRESET = "math"
"""The layout of a file whose NAME is not a preset: `problem`, `answer` (else the last box of `solution`)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FIELD = re.compile(r"^[^\s:=/\\]+$")


def parse_benchmark(spec: str) -> Benchmark:
    """`gsm8k`, `aime24=/data/aime.parquet`, `mine=my.jsonl:q:a` -> a Benchmark; ValueError saying why not."""
    spec = spec.strip()
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not _NAME.match(name):
        raise ValueError(f"benchmark {spec!r}: the name {name!r} must be letters, digits, '_', '.' or '-' "
                         "(it names the output files)")
    if not sep:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; presets: {sorted(BENCHMARKS)}; for a file of your own "
                             f"use {name}=PATH[:problem_field:answer_field]")
        return BENCHMARKS[name]
    path, prompt_field, answer_field = rest.strip(), None, None
    parts = path.rsplit(":", 2)
    if len(parts) == 3 and all(_FIELD.match(p) for p in parts[1:]):
        path, prompt_field, answer_field = parts
    elif len(parts) == 2 and _FIELD.match(parts[1]) and not Path(path).exists():
        raise ValueError(f"benchmark {spec!r}: give both fields, {name}=PATH:problem_field:answer_field")
    if not path:
        raise ValueError(f"benchmark {spec!r}: no file after '='; expected {name}=PATH[:problem_field:answer_field]")
    preset = BENCHMARKS[name].preset if name in BENCHMARKS else GENERIC_PRESET
    return Benchmark(name, path, preset, prompt_field, answer_field)


def parse_benchmarks(specs: str | list[str]) -> list[Benchmark]:
    """A list of specs (or one comma-separated string of preset names) -> benchmarks with distinct names."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    benchmarks = [parse_benchmark(s) for s in items if s.strip()]
    if not benchmarks:
        raise ValueError(f"no benchmark given; presets: {sorted(BENCHMARKS)}, or NAME=PATH for a file")
    names = [b.name for b in benchmarks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"benchmark name(s) {twice} given twice; each names its own outputs")
    return benchmarks
