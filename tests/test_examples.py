"""Every examples/*.yaml is valid, offline, at each layout its header documents.

An example's header names its layouts as machine-readable comment pairs:

    # launch: sbatch --nodes=N --gpus-per-node=G ... slurm/codistill.sbatch [launcher options] examples/X.yaml
    # world_size: W

For each pair, `slurm/codistill.sbatch --dry-run` runs on N nodes of G GPUs with those launcher
options; the trainer's world (nodes x processes per node) must be W, and the config with the
overrides the script passes (the SGLang URLs) must pass `validate` at W. The header's
`codistill plan --config ...` commands must find a valid layout, and `codistill config show` must
work, all without the network (the architectures come from examples/hf_configs/).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from megatron_codistill.cli import main
from megatron_codistill.config import load_config, validate
from tests.launch.dry_run import REPO, sbatch_dry_run, sglang_python, torchrun_options

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _layouts(path: Path) -> list[tuple[list[str], int]]:
    text = path.read_text()
    launches = re.findall(r"^# launch: (.*)$", text, re.M)
    worlds = [int(w) for w in re.findall(r"^# world_size: (\d+)$", text, re.M)]
    assert launches and len(launches) == len(worlds), f"{path.name}: every '# launch:' needs a '# world_size:'"
    return [(shlex.split(line), world) for line, world in zip(launches, worlds)]


LAYOUTS = [pytest.param(p, argv, world, id=f"{p.stem}-{world}") for p in EXAMPLES for argv, world in _layouts(p)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize("path,argv,world", LAYOUTS)
def test_example_validates_at_its_documented_world_size(path, argv, world, tmp_path):
    assert argv[0] == "sbatch" and "slurm/codistill.sbatch" in argv, argv
    split = argv.index("slurm/codistill.sbatch")
    sbatch_opts = dict(o.removeprefix("--").partition("=")[::2] for o in argv[1:split] if o.startswith("--"))
    script_args = argv[split + 1:]
    assert script_args[-1] == str(path.relative_to(REPO))
    run = sbatch_dry_run(["--sglang-python", sglang_python(tmp_path), *script_args],
                         nodes=int(sbatch_opts["nodes"]), gpus=int(sbatch_opts["gpus-per-node"]))
    assert run.returncode == 0, run.stderr
    opts, train = torchrun_options(run.trainers[0][2])
    assert int(opts["--nnodes"]) * int(opts["--nproc-per-node"]) == world
    assert train[0] == "train" and train[-1] == "--resume"
    cfg = load_config(REPO / train[1], train[2:-1])
    assert cfg.rollout.engine == "sglang" and len(cfg.rollout.sglang.urls) == len(run.servers)
    validate(cfg, world)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_and_shows_offline(path, capsys):
    plans = re.findall(r"^#\s+codistill (plan --config .*)$", path.read_text(), re.M)
    assert plans, f"{path.name} documents no `codistill plan --config` command"
    large = load_config(path).large
    for command in plans:
        argv = shlex.split(command)
        argv[argv.index("--config") + 1] = str(REPO / argv[argv.index("--config") + 1])
        assert main(argv) == 0, f"no valid layout for `codistill {command}`:\n{capsys.readouterr().out}"
        # and the layout the example chose is among the valid ones
        own = ["--tp", str(large.tensor_parallel), "--pp", str(large.pipeline_parallel)]
        assert main(argv + own) == 0, f"`codistill {command}` rejects the example's layout:\n{capsys.readouterr().out}"
        capsys.readouterr()
    assert main(["config", "show", str(path)]) == 0
    assert "hf_configs" in capsys.readouterr().out


def test_hf_configs_are_the_ones_the_examples_name():
    named = {Path(load_config(p).small.hf_config).name for p in EXAMPLES} | {
        Path(load_config(p).large.hf_config).name for p in EXAMPLES}
    shipped = {d.name for d in (REPO / "examples" / "hf_configs").iterdir() if (d / "config.json").is_file()}
    assert named == shipped
    for p in EXAMPLES:
        cfg = load_config(p)
        for m in (cfg.small, cfg.large):  # the weights still come from the hub model of the same name
            assert m.checkpoint.endswith("/" + Path(m.hf_config).name)
