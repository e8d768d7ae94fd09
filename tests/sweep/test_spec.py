"""Sweep specs: every mistake is refused before anything runs, with the file and the key in the message."""

from __future__ import annotations

import pytest

from megatron_codistill.sweep.cells import expand
from megatron_codistill.sweep.spec import SpecError, load_spec
from tests.sweep.conftest import REPO, write_spec

MODES = {"codistill": ["algorithm.mode=codistill"], "opd": ["algorithm.mode=opd"]}


def _error(tmp_path, **fields) -> str:
    with pytest.raises(SpecError) as e:
        expand(load_spec(write_spec(tmp_path, **fields)))
    assert str(tmp_path / "spec.yaml") in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("fields, key, words", [
    ({"axes": {"seed": [1]}, "bogus": 1}, "bogus", "unknown key"),
    ({"axes": {}}, "axes", "at least one axis"),
    ({"axes": {"mode": {"codistill": ["algorithm.mode"]}}}, "axes.mode.codistill[0]", "section.key=value"),
    ({"axes": {"mode": {"a/b": ["algorithm.mode=opd"]}}}, "axes.mode.a/b", "name directories"),
    ({"axes": {"lr": [1, 2]}}, "axes.lr", "only for `seed"),
    ({"axes": {"seed": [1, 1.5]}}, "axes.seed", "integers"),
    ({"axes": {"lr": {"key": "small.optimizer.lr", "values": [1, 1]}}}, "axes.lr.values[1]", "appears twice"),
    ({"axes": {"seed": [1]}, "overrides": ["run.dir=/x"]}, "overrides[0]", "run.dir is set by the sweep"),
    ({"axes": {"seed": [1], "s2": {"a": ["run.seed=3"]}}}, "axes.s2", "axis seed sets too"),
    ({"axes": {"mode": MODES, "seed": [1]}, "compare": {"axis": "mode", "baseline": "grpo"}},
     "compare.baseline", "not a value of axis mode"),
    ({"axes": {"mode": MODES}, "compare": {"axis": "mode", "baseline": "opd"}}, "compare.pair_by",
     "another axis"),
    ({"axes": {"mode": MODES, "seed": [1]}, "compare": {"axis": "pair", "baseline": "opd"}}, "compare.axis",
     "not an axis"),
    ({"axes": {"seed": [1]}, "metrics": {"at": ["final"]}}, "metrics.at[0]", "mean_last_N"),
    ({"axes": {"seed": [1]}, "metrics": {"keys": []}}, "metrics.keys", "non-empty"),
    ({"axes": {"seed": [1]}, "slurm": {"partiton": "cpu"}}, "slurm.partiton", "valid: partition"),
    ({"axes": {"seed": [1]}, "slurm": {"nodes": 0}}, "slurm.nodes", "integer >= 1"),
    ({"axes": {"seed": [1]}, "local": {"nproc_per_node": "2"}}, "local.nproc_per_node", "integer >= 1"),
    ({"axes": {"seed": [1]}, "base": "./missing.yaml"}, "base", "does not exist"),
])
def test_spec_errors_name_the_key(tmp_path, fields, key, words):
    msg = _error(tmp_path, **fields)
    assert f": {key}: " in msg and words in msg, msg


def test_a_cell_whose_config_is_wrong_is_named_with_the_config_key(tmp_path):
    msg = _error(tmp_path, axes={"mode": {"codistill": ["algorithm.mode=codistill"],
                                          "typo": ["algorithm.kd_alfa=0.3"]}, "seed": [1]})
    assert "cell mode=typo,seed=1" in msg and "algorithm.kd_alfa" in msg and "kd_alpha" in msg, msg
    msg = _error(tmp_path, axes={"seed": [1]}, overrides=["run.steps=0"])
    assert "run.steps (0) must be >= 1" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("axes: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_relative_paths_follow_the_trainer_rule(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("run: {steps: 3}\n")
    path = tmp_path / "sub" / "spec.yaml"
    path.write_text("base: ./base.yaml\nout: runs/x\naxes: {seed: [1]}\n")
    monkeypatch.chdir(tmp_path)
    spec = load_spec(path)
    assert spec.base == tmp_path / "sub" / "base.yaml"  # ./ and ../: from the spec file
    assert spec.out == tmp_path / "runs" / "x"  # otherwise: from the working directory
    assert spec.name == "spec" and spec.at == ["first", "last"] and spec.metrics is None


def test_the_readme_example_spec_is_valid(tmp_path):
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Studies"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "examples").symlink_to(REPO / "examples")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "study.yaml").write_text(block)
    spec = load_spec(tmp_path / "specs" / "study.yaml")
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 5 and cells[0].name == "pair=s32,mode=codistill,seed=1"
    assert spec.compare.baseline == "grpo_small" and spec.seed_axis == "seed"
    assert spec.slurm.nproc_per_node == 8 and spec.at == ["first", "last", "change", "mean_last_3"]
