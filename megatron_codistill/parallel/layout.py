"""Process groups of the two models in one SPMD job.

Every rank holds a shard of the large model (TP x PP, with DP = world / (TP*PP) replicas) and a
replica of the small model (DP = world, TP = PP = 1). Each model gets its own Megatron-Core
`ProcessGroupCollection`; the global `parallel_state` is never initialised.

Rank order follows Megatron's default "tp-cp-ep-dp-pp" (TP fastest): with world 8, TP 2, PP 2,
ranks {0,1} form a TP group, {0,2} a DP group and {0,4} a pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_codistill.parallel.cpu_patches import apply_cpu_patches

logger = logging.getLogger(__name__)

_DIMS = ["tp", "cp", "ep", "dp", "pp"]  # HyperCommGrid dims, fastest first
# ProcessGroupCollection field -> grid dims spanned (created on every rank in this order).
_GROUPS = {
    "tp": ["tp"], "cp": ["cp"], "ep": ["ep"], "dp": ["dp"], "pp": ["pp"],
    "mp": ["tp", "pp"], "tp_cp": ["tp", "cp"], "dp_cp": ["cp", "dp"], "tp_ep": ["tp", "ep"],
    "tp_ep_pp": ["tp", "ep", "pp"], "tp_dp_cp": ["tp", "cp", "dp"],
    # The distributed optimizer reduces grad norms over the whole model instance.
    "intra_dist_opt": ["tp", "cp", "ep", "dp", "pp"],
}


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise torch.distributed once; returns (rank, world size).

    Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK or SLURM's SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID; without either it starts a single process on a free local port. Backend:
    `backend`, else nccl with CUDA and gloo without. On CPU it also applies the CPU patches.
    """
    apply_cpu_patches()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        # a one-process job: its address is passed, not left in os.environ, where every command this
        # process starts later would inherit a MASTER_PORT that its own store holds
        env = launcher_env(os.environ)
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        dist.init_process_group(backend, init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                                rank=0, world_size=1)
        return 0, 1
    os.environ.update(launcher_env(os.environ))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, init_method="env://")
    return dist.get_rank(), dist.get_world_size()


def launcher_env(env) -> dict[str, str]:
    """The RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT variables to add to `env`:
    none under torchrun, SLURM's equivalents under srun, a one-process job otherwise."""
    out: dict[str, str] = {}
    if "RANK" in env:
        return out
    if "SLURM_PROCID" in env:
        out.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"],
                   LOCAL_RANK=env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
        out["MASTER_ADDR"] = env.get("MASTER_ADDR", env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
        # every task derives the same port from the job id
        out["MASTER_PORT"] = env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return out
    out.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR=env.get("MASTER_ADDR", "127.0.0.1"),
               MASTER_PORT=env.get("MASTER_PORT") or str(_free_port()))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ModelLayout:
    """Where this rank sits in one model's TP x PP x DP grid, with that model's process groups."""

    tp: int
    """Tensor-parallel size."""
    pp: int
    """Pipeline-parallel size."""
    dp: int
    """Data-parallel size (replicas of the model)."""
    tp_rank: int
    """Rank within the TP group."""
    pp_rank: int
    """Pipeline stage of this rank (0 = first)."""
    dp_rank: int
    """Replica index of this rank."""
    world_size: int
    """tp * pp * dp, the ranks this model spans."""
    pg_collection: object
    """Megatron-Core ProcessGroupCollection of this model (pass to GPTModel, DDP, optimizer)."""
    is_first_stage: bool
    """This rank holds the embedding (pp_rank == 0)."""
    is_last_stage: bool
    """This rank holds the output layer and computes logits (pp_rank == pp - 1)."""
    pp_ranks: tuple[int, ...]
    """Global ranks of this rank's pipeline, in stage order."""
    last_stage_rank: int
    """Global rank of the last stage of this pipeline (source of log-prob broadcasts)."""
    dp_ranks: tuple[int, ...] = ()
    """Global ranks of this rank's DP group, in replica order."""

    @property
    def tp_group(self):
        return self.pg_collection.tp

    @property
    def pp_group(self):
        return self.pg_collection.pp

    @property
    def dp_group(self):
        return self.pg_collection.dp

    def describe(self) -> str:
        return (f"TP={self.tp} PP={self.pp} DP={self.dp} (tp_rank {self.tp_rank}, pp_rank "
                f"{self.pp_rank}, dp_rank {self.dp_rank})")


def build_layouts(*, tp: int, pp: int, seed: int = 1234) -> tuple[ModelLayout, ModelLayout]:
    """(large, small) layouts: large TP x PP x DP, small DP over all ranks. Collective: every rank
    calls it with the same arguments after `init_distributed()`.

    `seed` seeds Megatron's CUDA RNG tracker on GPU (TP-rank offset from the large layout); unused
    on CPU.
    """
    rank, world = init_distributed()
    for name, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if world % (tp * pp):
        raise ValueError(
            f"world size {world} is not divisible by tensor_model_parallel_size * "
            f"pipeline_model_parallel_size = {tp} * {pp}; use a world size that is a multiple of "
            f"{tp * pp} or change TP/PP")
    large = _cached_layout("large", tp=tp, pp=pp, dp=world // (tp * pp), rank=rank)
    small = _cached_layout("small", tp=1, pp=1, dp=world, rank=rank)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed, tp_rank=large.tp_rank, ep_rank=0, etp_rank=0)
    logger.info("large model: %s; small model: %s", large.describe(), small.describe())
    return large, small


_LAYOUTS: dict[tuple, tuple[object, ModelLayout]] = {}
"""(role, tp, pp, dp, rank) -> (the default process group it was built in, the layout)."""


def _cached_layout(role: str, *, tp: int, pp: int, dp: int, rank: int) -> ModelLayout:
    """The layout of `role` built once per default process group: a process that builds several runs
    (tests, in-process sweeps, benchmarks) reuses its process groups instead of leaking a set of gloo
    communicators and their threads per run. The large and small roles never share groups."""
    key = (role, tp, pp, dp, rank)
    world_group = dist.group.WORLD
    cached = _LAYOUTS.get(key)
    if cached is None or cached[0] is not world_group:
        _LAYOUTS[key] = (world_group, _build_layout(tp=tp, pp=pp, dp=dp, rank=rank))
    return _LAYOUTS[key][1]


def _build_layout(*, tp: int, pp: int, dp: int, rank: int) -> ModelLayout:
    from megatron.core.hyper_comm_grid import HyperCommGrid
    from megatron.core.process_groups_config import ProcessGroupCollection

    grid = HyperCommGrid([tp, 1, 1, dp, pp], _DIMS, backend=_subgroup_backend())
    known = {f.name for f in dataclasses.fields(ProcessGroupCollection)}
    groups = {name: grid.create_pg(dims) for name, dims in _GROUPS.items() if name in known}
    groups["expt_tp"], groups["expt_dp"] = groups["tp"], groups["dp"]
    pipelines = grid.get_rank_enum("pp")
    # Tied embeddings sync between first and last stage; position embeddings (unused with RoPE)
    # live on the first stage only. new_subgroups_by_enumeration returns None for non-members.
    groups["embd"] = _enumerated([sorted({p[0], p[-1]}) for p in pipelines])
    groups["pos_embd"] = _enumerated([[p[0]] for p in pipelines])
    pgc = ProcessGroupCollection(**{k: v for k, v in groups.items() if k in known})
    pp_ranks = next(tuple(p) for p in pipelines if rank in p)
    dp_ranks = next(tuple(g) for g in grid.get_rank_enum("dp") if rank in g)
    tp_rank, pp_rank, dp_rank = dist.get_rank(pgc.tp), pp_ranks.index(rank), dp_ranks.index(rank)
    return ModelLayout(
        tp=tp, pp=pp, dp=dp, tp_rank=tp_rank, pp_rank=pp_rank, dp_rank=dp_rank, world_size=tp * pp * dp,
        pg_collection=pgc, is_first_stage=pp_rank == 0, is_last_stage=pp_rank == pp - 1,
        pp_ranks=pp_ranks, last_stage_rank=pp_ranks[-1], dp_ranks=dp_ranks,
    )


def _enumerated(ranks: list[list[int]]):
    group, _ = dist.new_subgroups_by_enumeration(ranks, backend=_subgroup_backend())
    return group


def _subgroup_backend() -> str | None:
    return None if torch.cuda.is_available() else "gloo"

