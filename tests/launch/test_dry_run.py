"""slurm/codistill.sbatch --dry-run (no SLURM needed) and slurm/node_launch.sh outside SLURM.

- 2 trainer nodes + 1 SGLang node: the per-node commands (servers on their GPUs and ports with the
  servers' own Python, torchrun agents with node ranks 0 and 1 and the first trainer host as master,
  the rollout URLs passed to the trainer); a servers' environment without sglang is refused at start.
- One node with split GPUs: the trainer keeps the first GPUs, the servers take the last ones.
- node_launch.sh starts two real torchrun agents of one two-node rendezvous on this machine.
- The scripts expand possibly-empty arrays in the form bash < 4.4 accepts under `set -u`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

from tests.launch.dry_run import NODE_LAUNCH, REPO, SBATCH, clean_env, sbatch_dry_run, sglang_python, torchrun_options

LOCAL_CLUSTER = REPO / "slurm" / "local_cluster.sh"

EXAMPLE = "examples/qwen2.5-math-1.5b_7b.yaml"


def test_two_trainer_nodes_and_one_sglang_node(tmp_path):
    spy = sglang_python(tmp_path)
    run = sbatch_dry_run(["--sglang-nodes", "1", "--sglang-python", spy, "--sglang-args", "--mem-fraction-static 0.7",
                          EXAMPLE, "algorithm.prompts_per_step=64"], nodes=3, gpus=8)
    assert run.returncode == 0, run.stderr
    assert f"servers: SGLang 0.5.23 from {spy}" in run.stdout
    # the third node: 8 servers of TP 1, one GPU each, ports 30000.., the servers' own interpreter
    assert [(h, g) for h, g, _ in run.servers] == [("node03", str(i)) for i in range(8)]
    for i, (_, _, argv) in enumerate(run.servers):
        assert argv == [spy, "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-Math-1.5B", "--host",
                        "0.0.0.0", "--port", str(30000 + i), "--tp-size", "1", "--mem-fraction-static", "0.7"]
    # nodes 1 and 2: one torchrun agent each, node ranks in node-list order, master = first trainer host
    assert [(h, r) for h, r, _ in run.trainers] == [("node01", 0), ("node02", 1)]
    urls = ",".join(f"http://node03:{30000 + i}" for i in range(8))
    for rank, (_, _, argv) in enumerate(run.trainers):
        assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
        opts, train = torchrun_options(argv)
        assert opts == {"--nnodes": "2", "--nproc-per-node": "8", "--node-rank": str(rank), "--master-addr": "node01",
                        "--master-port": str(20000 + 4242), "--max-restarts": "0"}
        assert train == ["train", EXAMPLE, "algorithm.prompts_per_step=64", "rollout.engine=sglang",
                         f"rollout.sglang.urls=[{urls}]", f"run.dir={REPO}/runs/codistill-4242", "--resume"]


def test_one_node_split_between_trainer_and_servers(tmp_path):
    run = sbatch_dry_run(["--sglang-gpus", "4", "--sglang-tp", "2", "--sglang-python", sglang_python(tmp_path),
                          EXAMPLE], nodes=1, gpus=8)
    assert run.returncode == 0, run.stderr
    assert [(h, g) for h, g, _ in run.servers] == [("node01", "4,5"), ("node01", "6,7")]
    assert [argv[argv.index("--port") + 1] for _, _, argv in run.servers] == ["30000", "30001"]
    ((host, rank, argv),) = run.trainers
    opts, train = torchrun_options(argv)
    assert (host, rank, opts["--nnodes"], opts["--nproc-per-node"]) == ("node01", 0, "1", "4")
    assert "rollout.sglang.urls=[http://node01:30000,http://node01:30001]" in train


def test_a_server_environment_without_sglang_is_refused_at_start():
    run = sbatch_dry_run(["--sglang-nodes", "1", EXAMPLE], nodes=2, gpus=8)  # servers would use --python
    assert run.returncode == 2 and not run.trainers and not run.servers
    assert f"need sglang importable by {sys.executable}" in run.stderr
    assert "--sglang-python ENV/bin/python" in run.stderr


def test_dry_run_outside_slurm_needs_the_node_names():
    out = subprocess.run(["bash", str(SBATCH), "--dry-run", EXAMPLE], cwd=REPO, env=clean_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "needs CODISTILL_DRY_RUN_NODES" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_launch_starts_two_agents_of_one_rendezvous_on_this_machine():
    port = _free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--python", sys.executable, "--module", "tests.launch.print_rank"]
    env = clean_env(OMP_NUM_THREADS="1")
    agents = [subprocess.Popen(["bash", str(NODE_LAUNCH), "trainer", "--node-rank", str(r), *common, "--", "x", "y z"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for r in (0, 1)]
    outputs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs
    workers = [json.loads(line.removeprefix("WORKER ")) for out in outputs for line in out.splitlines()
               if line.startswith("WORKER ")]
    assert sorted((w["RANK"], w["GROUP_RANK"], w["WORLD_SIZE"]) for w in workers) == [("0", "0", "2"), ("1", "1", "2")]
    assert all(w["argv"] == ["x", "y z"] and w["MASTER_PORT"] == str(port) for w in workers)


# Arrays these scripts fill before every use (never empty where expanded); any other array must be
# expanded as ${A[@]+"${A[@]}"}, since bash < 4.4 calls an empty "${A[@]}" unbound under `set -u`.
NON_EMPTY = {"HOSTS", "TRAIN_HOSTS", "SGLANG_HOSTS", "TRAIN_SRUN", "SGLANG_SRUN", "URLS", "SERVER_ARGS", "AGENT_ARGS",
             "TRAIN_ARGS", "CMD", "LAUNCH", "PACKAGES", "BINARIES"}
GUARD = r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}'


def test_possibly_empty_arrays_are_expanded_safely_for_old_bash():
    must = {SBATCH: {"OVERRIDES", "ROLLOUT_OVERRIDES", "CPU_ARGS"}, NODE_LAUNCH: {"ARGS", "EXTRA"}}
    for script in (SBATCH, NODE_LAUNCH, LOCAL_CLUSTER):
        text = script.read_text()
        assert set(re.findall(GUARD, text)) >= must.get(script, set())
        # any other expansion (quoted or not, slices included) but ${#A[@]} and ${A[*]:-default}
        for name in re.findall(r"\$\{(\w+)\[[@*]\](?!:?[-+=?])", re.sub(GUARD, "", text)):
            assert name in NON_EMPTY, f"{script.name}: {name} may be empty where expanded; guard it (see NON_EMPTY)"
