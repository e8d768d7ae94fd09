"""Read a dataset through the `datasets` library: a local jsonl / json / parquet file or a hub name."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
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
        try:
            with _quiet(datasets):
                return datasets.load_dataset(builder, data_files=str(file), split="train")
        except Exception as e:  # the library's errors rarely name the file
            raise ValueError(f"dataset file {str(file)!r} cannot be read as {builder}: {e}") from e
    with _quiet(datasets):
        return datasets.load_dataset(path, split=split)  # hub name (needs the network or a local cache)


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

    A malformed row stops the load with a ValueError naming the file, the row index and the field;
    a dataset without rows is an error too.
    """
    fields = get_preset(preset, prompt_field=prompt_field, answer_field=answer_field)
    if limit is not None and limit < 1:
        raise ValueError(f"limit ({limit}) must be >= 1 (or None for every row)")
    rows = load_rows(path, split=split)
    n = len(rows) if limit is None else min(limit, len(rows))
    examples = [to_example(row, i, fields, path) for i, row in enumerate(rows.select(range(n)))]
    if not examples:
        raise ValueError(f"{path}: no valid row (the dataset is empty)")
    return examples
