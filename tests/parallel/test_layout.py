"""Layouts of a one-rank job, layout errors, and how launch variables are read."""

from __future__ import annotations

import pytest

from megatron_codistill.parallel.layout import build_layouts, launcher_env


def test_single_rank_layouts(layouts):
    large, small = layouts
    for layout in (large, small):
        assert (layout.tp, layout.pp, layout.dp, layout.world_size) == (1, 1, 1, 1)
        assert (layout.tp_rank, layout.pp_rank, layout.dp_rank) == (0, 0, 0)
        assert layout.is_first_stage and layout.is_last_stage
        assert layout.pp_ranks == (0,) and layout.last_stage_rank == 0
        assert layout.pg_collection.tp.size() == layout.pg_collection.dp.size() == 1
    assert large.pg_collection is not small.pg_collection


def test_world_size_must_be_divisible_by_tp_times_pp(layouts):
    with pytest.raises(ValueError, match=r"world size 1 is not divisible by .* = 2 \* 1"):
        build_layouts(tp=2, pp=1)
    with pytest.raises(ValueError, match="pipeline_model_parallel_size=0"):
        build_layouts(tp=1, pp=0)


def test_launcher_env_torchrun_is_left_alone():
    assert launcher_env({"RANK": "3", "WORLD_SIZE": "4"}) == {}


def test_launcher_env_from_slurm():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123",
           "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7"}
    assert launcher_env(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                 "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "20123"}
    assert launcher_env({**env, "MASTER_ADDR": "node1", "MASTER_PORT": "999"})["MASTER_ADDR"] == "node1"


def test_launcher_env_single_process():
    out = launcher_env({})
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"], out["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")
    assert 0 < int(out["MASTER_PORT"]) < 65536
