"""Config loading: types, unknown keys, overrides, and the cross-component layout checks."""

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_codistill.config import ConfigError, load_config, to_yaml, validate

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny_cpu" / "config.yaml"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_tiny_config_resolves_and_validates():
    cfg = load_config(TINY)
    validate(cfg, world_size=1)
    validate(cfg, world_size=2)
    assert cfg.algorithm.group_size == 8
    assert Path(cfg.data.train).is_file()  # ./ paths resolve against the YAML's directory


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_config(TINY, ["run.steps=7", "large.tensor_parallel=2", "rollout.sglang.urls=[http://a:1]",
                             "algorithm.dual_clip=3", "algorithm.pods_n=null"])
    assert cfg.run.steps == 7 and cfg.large.tensor_parallel == 2
    assert cfg.rollout.sglang.urls == ["http://a:1"] and cfg.algorithm.dual_clip == 3.0
    assert load_config(TINY, ["small.optimizer.lr=1e-6"]).small.optimizer.lr == 1e-6


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm.grup_size=8", "unknown key algorithm.grup_size (did you mean algorithm.group_size?)"),
        ("large.tensor_parallel=two", "large.tensor_parallel: expected an integer, got 'two'"),
        ("algorithm.mode=ppo", "algorithm.mode: 'ppo' is not valid; choose one of 'codistill'"),
        ("run.eval_greedy=1", "run.eval_greedy: expected true or false, got 1"),
        ("small.optimizer=3", "small.optimizer: expected a mapping"),
        ("nonsense", "expected section.key=value"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    assert message in str(e.value)


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["large.tensor_parallel=3"], 3, "num_attention_heads"),
        (["large.tensor_parallel=4"], 4, "num_key_value_heads"),
        (["large.tensor_parallel=2"], 3, "world size (3) must be divisible by"),
        (["large.pipeline_parallel=8"], 8, "num_layers"),
        (["small.tensor_parallel=2"], 2, "the small model is data parallel"),
        (["algorithm.group_size=1"], 1, "algorithm.group_size (1) must be >= 2"),
        (["algorithm.prompts_per_step=3"], 2, "must be divisible by the world size (2)"),
        (["algorithm.pods_n=4"], 1, "algorithm.pods_n (4) must exceed group_size (8)"),
        (["small.arch.hidden=3"], 1, "small.arch"),
        (["data.train=''"], 1, "data.train is empty"),
    ],
)
def test_impossible_layouts_stop_before_compute(overrides, world, message):
    cfg = load_config(TINY, overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg, world)
    assert message in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [1, 2"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(TINY, ["run.steps=5"])
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_cli_config_show_prints_resolved_config():
    out = subprocess.run(
        [sys.executable, "-m", "megatron_codistill.cli", "config", "show", str(TINY), "run.steps=9",
         "--world-size", "2"], capture_output=True, text=True, check=True,
    ).stdout
    assert "steps: 9" in out and "group_size: 8" in out
    bad = subprocess.run(
        [sys.executable, "-m", "megatron_codistill.cli", "config", "show", str(TINY), "large.tensor_parallel=3",
         "--world-size", "3"], capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "num_attention_heads" in bad.stderr
