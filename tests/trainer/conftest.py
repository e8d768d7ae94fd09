from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_cpu" / "config.yaml"

# A few seconds per run: tiny batches, two warm-start steps per model, short evaluations.
FAST = [
    "run.steps=2", "run.eval_every=2", "logging.progress=false", "logging.tensorboard=false", "logging.plots=false",
    "data.train_limit=256",
    "warm_start.small_steps=2", "warm_start.large_steps=2", "warm_start.batch_size=8",
    "algorithm.prompts_per_step=4", "algorithm.group_size=4", "small.micro_batch_size=8",
    "large.micro_batch_size=8", "data.eval=[{name: arith, path: ./data/test.jsonl, preset: arith, limit: 8}]",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that make the tiny example run in seconds in `tmp_path`."""
    return [f"run.dir={tmp_path / 'run'}", *FAST]
