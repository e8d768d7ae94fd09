"""Two "nodes" on this machine: the per-node line of slurm/codistill.sbatch (`slurm/node_launch.sh trainer`)
started twice, node ranks 0 and 1 with --nnodes 2 and one process each, meet in torchrun's rendezvous on a
c10d TCPStore at --master-addr:--master-port and train the tiny example with the large model TP=2 across
the two nodes. A preemption (SIGTERM injected when step 3's generation is launched) checkpoints step 2
and exits cleanly; the same two lines with --resume continue from that checkpoint to step 4, every step
logged once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.launch.dry_run import NODE_LAUNCH, REPO, clean_env
from tests.trainer.conftest import FAST, TINY

pytestmark = pytest.mark.slow
OVERRIDES = [o for o in FAST if not o.startswith(("run.steps", "run.eval_every"))] + [
    "run.steps=4", "run.eval_every=0", "checkpoint.every=2", "large.tensor_parallel=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(run_dir, *extra: str, fault: str | None = None) -> list[str]:
    """Both nodes' agents of one job; their combined output (stdout and stderr), node 0 first."""
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
              str(_free_port()), "--python", sys.executable]
    train = ["train", str(TINY), f"run.dir={run_dir}", *OVERRIDES, *extra]
    env = clean_env(OMP_NUM_THREADS="1", **({"CODISTILL_FAULT": fault} if fault else {}))
    agents = [subprocess.Popen(["bash", str(NODE_LAUNCH), "trainer", "--node-rank", str(r), *common, "--", *train],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for r in (0, 1)]
    outputs = [a.communicate(timeout=900)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    return outputs


def steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_agents_train_tp2_across_nodes_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    first = two_nodes(run_dir, fault="step.launch@3:sigterm")
    assert "large model: TP=2 PP=1 DP=1 (tp_rank 0" in first[0]  # one TP group over both nodes
    assert "preempted at step 2: checkpoint saved" in first[0]
    assert steps(run_dir) == [1, 2]
    saved = run_dir / "checkpoints" / "step_000002"
    assert sorted(p.name for p in saved.glob("rank_*.pt")) == ["rank_00000.pt", "rank_00001.pt"]
    before = (run_dir / "metrics.jsonl").read_text().splitlines()

    second = two_nodes(run_dir, "--resume")
    assert f"resumed from {saved} (step 2)" in second[0] and "resharded" not in second[0]
    assert steps(run_dir) == [1, 2, 3, 4]
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[:2] == before
    assert (run_dir / "checkpoints" / "step_000004" / "COMPLETE").is_file()
