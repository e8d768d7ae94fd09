"""`codistill convert ...` and tools/convert_checkpoint.py drive the same conversions."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

from megatron_codistill.cli import main
from megatron_codistill.convert.cli import parse_size
from tests.convert._util import hf_config, hf_state, make_hf_model, save_hf

TOOL = str(Path(__file__).resolve().parents[2] / "tools" / "convert_checkpoint.py")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return save_hf(make_hf_model(hf_config("llama")), str(tmp_path_factory.mktemp("cli") / "hf"))


def test_codistill_convert_both_ways(hf, tmp_path, capsys):
    mcore, out = str(tmp_path / "mcore"), str(tmp_path / "out")
    assert main(["convert", "hf-to-mcore", "--hf", hf, "--out", mcore, "--tp", "2", "--pp", "2",
                 "--dtype", "bf16"]) == 0
    assert main(["convert", "mcore-to-hf", "--mcore", mcore, "--out", out, "--max-shard-size", "50KB"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    got, want = hf_state(out), hf_state(hf)
    assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n].to(torch.bfloat16)) for n in want)


def test_refusals_exit_2_with_the_reason(hf, tmp_path, capsys):
    assert main(["convert", "hf-to-mcore", "--hf", hf, "--out", str(tmp_path / "m"), "--tp", "3"]) == 2
    assert "tensor_model_parallel_size=3 must divide num_attention_heads=4" in capsys.readouterr().err
    assert main(["convert", "mcore-to-hf", "--mcore", hf, "--out", str(tmp_path / "h")]) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err


def test_tools_wrapper(hf, tmp_path, monkeypatch):
    out = str(tmp_path / "mcore")
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint.py", "hf-to-mcore", "--hf", hf, "--out", out])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(TOOL, run_name="__main__")
    assert done.value.code == 0
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint.py", "hf-to-mcore", "--hf", hf, "--out", out])
    with pytest.raises(SystemExit) as again:  # refuses to overwrite without --overwrite
        runpy.run_path(TOOL, run_name="__main__")
    assert again.value.code == 2


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1000") == 1000
