"""Read a dataset through the `datasets` library: a local jsonl / json / parquet file or a hub name.

A JSONL file is first read line by line here, so that a malformed line is reported in one line naming
the file and the line number (the library's own error is a long chain that names neither), and so that
errors in a row can name its line.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from megatron_codistill.data.presets import Example, get_preset, to_example

logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _looks_local(path: str) -> bool:
    return os.path.exists(path) or Path(path).suffix in LOCAL_FORMATS or path.startswith((".", "/", "~"))


def load_rows(path: str, *, split: str = "train"):
    """A `datasets.Dataset` of the rows of `path` (local file) or of `split` of hub dataset `path`.

    Row order is the file's. Raises ValueError for a missing file, an unknown suffix or a file the
    library cannot read, naming the path.
    """
    import datasets

    if _looks_local(path):
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"dataset file {str(file)!r} does not exist")
        builder = LOCAL_FORMATS.get(file.suffix)
        if builder is None:
            raise ValueError(f"dataset file {str(file)!r}: unknown suffix {file.suffix!r}; use one of "
                             f"{sorted(LOCAL_FORMATS)} or a hub dataset name")
        if file.stat().st_size == 0:
            raise ValueError(f"dataset file {str(file)!r} is empty: no valid row")
        if file.suffix == ".jsonl":
            jsonl_lines(file)
        try:
            with _quiet(datasets):
                return datasets.load_dataset(builder, data_files=str(file), split="train")
        except Exception as e:  # the library's errors rarely name the file, and chain dozens of lines
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"dataset file {str(file)!r} cannot be read as {builder}: {first}") from None
    with _quiet(datasets):
        return datasets.load_dataset(path, split=split)  # hub name (needs the network or a local cache)


def jsonl_lines(file: str | Path) -> tuple[int, ...]:
    """The 1-based line numbers of the rows of a JSONL file (blank lines hold none), after checking that
    every line is a JSON object; ValueError "FILE:LINE: ..." at the first that is not. Read once per
    version of the file."""
    st = os.stat(file)
    return _jsonl_lines(str(file), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=32)
def _jsonl_lines(file: str, mtime_ns: int, size: int) -> tuple[int, ...]:  # noqa: ARG001 - cache keys
    lines = []
    with open(file, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{file}:{number}"
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
                row = json.loads(text)
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}): {text[:80]!r}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: a JSON {type(row).__name__}; expected an object of named fields")
            lines.append(number)
    return tuple(lines)


@contextmanager
def _quiet(datasets):
    """No progress bars while loading (they would interleave with the run's own log)."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def load_examples(
    path: str,
    *,
    preset: str,
    split: str = "train",
    prompt_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Examples of the first `limit` rows (all if None) of a dataset, read with a field preset.

    A malformed row stops the load with a ValueError naming the file, the row (and for JSONL its line)
    and the field; a dataset without rows is an error too.
    """
    fields = get_preset(preset, prompt_field=prompt_field, answer_field=answer_field)
    if limit is not None and limit < 1:
        raise ValueError(f"limit ({limit}) must be >= 1 (or None for every row)")
    rows = load_rows(path, split=split)
    n = len(rows) if limit is None else min(limit, len(rows))
    local = Path(path).expanduser()
    lines = jsonl_lines(local) if local.suffix == ".jsonl" and local.is_file() else None
    examples = [to_example(row, i, fields, path, line=lines[i] if lines else None)
                for i, row in enumerate(rows.select(range(n)))]
    if not examples:
        raise ValueError(f"{path}: no valid row (the dataset is empty)")
    return examples
