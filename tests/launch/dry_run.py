"""Run `slurm/codistill.sbatch --dry-run` outside SLURM and parse the per-node commands it prints.

    run = sbatch_dry_run(["--sglang-nodes", "1", "examples/x.yaml"], nodes=3, gpus=8, tmp=tmp_path)
    run.servers   # [(host, CUDA_VISIBLE_DEVICES, argv)]
    run.trainers  # [(host, node rank, argv)]

A stand-in `sglang` package (only `__version__`) is importable by the interpreter `sglang_python`
returns, not by the trainer's: the script checks that the servers' environment imports sglang.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "slurm" / "codistill.sbatch"
NODE_LAUNCH = REPO / "slurm" / "node_launch.sh"


@dataclass
class DryRun:
    returncode: int
    stdout: str
    stderr: str
    servers: list[tuple[str, str, list[str]]] = field(default_factory=list)
    trainers: list[tuple[str, int, list[str]]] = field(default_factory=list)


def sglang_python(tmp: Path) -> str:
    """An interpreter path whose environment has a stand-in sglang 0.5.23 (a wrapper script)."""
    pkg = tmp / "sglang-env" / "site" / "sglang"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('__version__ = "0.5.23"\n')
    wrapper = tmp / "sglang-env" / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={pkg.parent} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SLURM's job variables (tests may run inside a job) plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CODISTILL_"))}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    env.update(extra)
    return env


def sbatch_dry_run(args: list[str], *, nodes: int, gpus: int, job_id: int = 4242, env: dict | None = None) -> DryRun:
    """`bash slurm/codistill.sbatch --dry-run --python <this python> ARGS` on nodes node01..nodeNN."""
    hosts = " ".join(f"node{i + 1:02d}" for i in range(nodes))
    run_env = clean_env(CODISTILL_DRY_RUN_NODES=hosts, CODISTILL_GPUS_PER_NODE=str(gpus), SLURM_JOB_ID=str(job_id),
                        **(env or {}))
    out = subprocess.run(["bash", str(SBATCH), "--dry-run", "--python", sys.executable, *args], cwd=REPO,
                         env=run_env, capture_output=True, text=True, timeout=180)
    run = DryRun(out.returncode, out.stdout, out.stderr)
    for line in out.stdout.splitlines():
        if m := re.fullmatch(r"\[dry-run\] sglang node (\S+): CUDA_VISIBLE_DEVICES=(\S+) (.*)", line):
            run.servers.append((m[1], m[2], shlex.split(m[3])))
        elif m := re.fullmatch(r"\[dry-run\] trainer node (\S+) \(node rank (\d+)\): (.*)", line):
            run.trainers.append((m[1], int(m[2]), shlex.split(m[3])))
    return run


def torchrun_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """({--nnodes: ..., ...}, the trainer's own arguments after `-m MODULE`) of a torchrun command."""
    i = argv.index("torch.distributed.run") + 1
    opts = {}
    while argv[i] != "-m":
        key, _, value = argv[i].partition("=")
        opts[key] = value
        i += 1
    return opts, argv[i + 2:]
