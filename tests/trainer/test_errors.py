"""Bad input stops with a clear message before any compute."""

import json

import pytest

from megatron_codistill.config import ConfigError
from megatron_codistill.trainer.train import train_main
from tests.trainer.conftest import TINY


def test_bad_config_value(tiny_overrides):
    with pytest.raises(ConfigError, match="algorithm.group_size"):
        train_main(str(TINY), [*tiny_overrides, "algorithm.group_size=1"])


def test_missing_checkpoint(tiny_overrides, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises((FileNotFoundError, ValueError, OSError)) as e:
        train_main(str(TINY), [*tiny_overrides, f"small.checkpoint={missing}"])
    assert str(missing) in str(e.value)


def test_dataset_without_valid_rows(tiny_overrides, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1=", "answer": "02"}) + "\n")
    with pytest.raises(ValueError) as e:
        train_main(str(TINY), [*tiny_overrides, f"data.train={bad}", "data.max_prompt_tokens=2"])
    assert str(bad) in str(e.value)
