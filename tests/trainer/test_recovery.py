"""No crash point leaves a run that cannot resume: faults injected at every point of a save (a hard exit,
no cleanup), damaged checkpoints and a preemption inside the warm start all continue to the metrics of
an uninterrupted run, with every step logged once."""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_codistill.trainer.checkpoint import DamagedCheckpoint
from tests.trainer.conftest import FAST, TINY
from tests.trainer.test_resume import ENV, TIMING

pytestmark = pytest.mark.slow
# steps 0 (after the warm start), 2 and 4 are saved: the 2nd save is step 2's
BASE = [o for o in FAST if not o.startswith("run.steps")] + ["run.steps=4", "checkpoint.every=2",
                                                             "checkpoint.keep_last=0"]


def train(run_dir, *extra, fault: str | None = None, resume: bool = False):
    env = dict(ENV, CODISTILL_FAULT=fault) if fault else ENV
    cmd = [sys.executable, "-m", "megatron_codistill.cli", "train", str(TINY), f"run.dir={run_dir}", *BASE,
           *extra, *(["--resume"] if resume else [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)} for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = train(run_dir, "checkpoint.export_hf=true")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    return run_dir, rows


SAVE_POINTS = ["before_rank_file", "after_rank_file", "after_state", "after_marker", "after_rename", "after_prune"]


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_a_hard_exit_at_each_point_of_a_save_leaves_a_resumable_directory(point, tmp_path):
    """A child process exits (no cleanup) at `point` of the 2nd save; the newest checkpoint found is the
    previous one until the marked directory is renamed, and saving the same step again succeeds."""
    from megatron_codistill.trainer.checkpoint import CheckpointManager

    def manager():
        return CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=1)

    def second_save():
        os.environ["CODISTILL_FAULT"] = f"checkpoint.{point}:exit"
        manager().save("step_000002", {"rng": torch.arange(3)}, {"step": 2})
        os._exit(0)

    manager().save("step_000000", {"rng": torch.arange(2)}, {"step": 0})
    child = multiprocessing.get_context("fork").Process(target=second_save)
    child.start()
    child.join()
    assert child.exitcode == 17
    newest = manager().load_latest()
    assert newest.path.name == ("step_000002" if point in ("after_rename", "after_prune") else "step_000000")
    manager().save("step_000002", {"rng": torch.arange(3)}, {"step": 2})  # the resumed run saves it again
    assert manager().load_latest().rank_state["rng"].tolist() == [0, 1, 2]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002"]  # keep_last=1


@pytest.mark.parametrize("point", ["after_marker", "after_rename"])
def test_exit_during_a_save_then_resume_equals_the_uninterrupted_run(point, reference, tmp_path):
    """The two ways a save can be cut (above, at the manager level, for every point): before the rename the
    run resumes from the previous checkpoint past a leftover `.tmp`; after it, from the one just saved."""
    run_dir = tmp_path / "run"
    killed = train(run_dir, fault=f"checkpoint.{point}@2:exit")
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step_000002.tmp").is_dir() == (point == "after_marker")
    resumed = train(run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expect = "step_000000" if point == "after_marker" else "step_000002"
    assert f"resumed from {run_dir / 'checkpoints' / expect}" in resumed.stderr
    assert metrics(run_dir) == reference[1]  # each step once, equal to the uninterrupted run


def test_exit_during_the_hf_export_is_redone_on_resume(reference, tmp_path):
    run_dir = tmp_path / "run"
    # the exports of step 0 (large, small) come first: the 3rd export is step 2's large model
    killed = train(run_dir, "checkpoint.export_hf=true", fault="export.before_marker@3:exit")
    assert killed.returncode == 17
    assert not (run_dir / "exports" / "step_000002" / "large" / "config.json").exists()
    resumed = train(run_dir, "checkpoint.export_hf=true", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(run_dir) == reference[1]
    for step in (0, 2, 4):
        for model in ("small", "large"):
            ours, ref = (d / "exports" / f"step_{step:06d}" / model / "model.safetensors"
                         for d in (run_dir, reference[0]))
            assert ours.read_bytes() == ref.read_bytes(), (step, model)


def damage_file(newest, damage: str):
    target = newest / ("trainer_state.json" if damage == "empty_trainer_state" else "rank_00000.pt")
    if damage == "truncate_rank_file":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "delete_rank_file":
        target.unlink()
    else:
        target.write_text("")
    return target


@pytest.mark.parametrize("damage", ["truncate_rank_file", "delete_rank_file", "empty_trainer_state"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_loaded(damage, reference, tmp_path):
    from megatron_codistill.trainer.checkpoint import CheckpointManager

    shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
    target = damage_file(tmp_path / "checkpoints" / "step_000004", damage)
    manager = CheckpointManager(tmp_path, rank=0, world_size=1, layout=loaded_layout(reference[0]))
    assert manager.load_latest().path.name == "step_000002"
    damage_file(tmp_path / "checkpoints" / "step_000002", damage)
    damage_file(tmp_path / "checkpoints" / "step_000000", damage)
    with pytest.raises(DamagedCheckpoint) as e:
        manager.load_latest()
    assert str(target) in str(e.value) and "step_000000" in str(e.value)


def loaded_layout(run_dir) -> dict:
    return json.loads((run_dir / "checkpoints" / "step_000000" / "trainer_state.json").read_text())["layout"]


def test_a_run_with_a_damaged_newest_checkpoint_resumes_from_the_previous_one(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    shutil.rmtree(run_dir / "exports")
    target = damage_file(run_dir / "checkpoints" / "step_000004", "truncate_rank_file")
    resumed = train(run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert str(target) in resumed.stderr and "trying the previous one" in resumed.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'step_000002'}" in resumed.stderr
    assert metrics(run_dir) == reference[1]


def test_sigterm_inside_the_warm_start_checkpoints_its_progress(reference, tmp_path):
    run_dir = tmp_path / "run"
    # warm start: small 2 steps, then large 2 steps; the signal arrives after the 3rd (large 1/2)
    stopped = train(run_dir, fault="warm_start.step@3:sigterm")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "preempted during the warm start" in stopped.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["warmup_000003"]
    assert not (run_dir / "metrics.jsonl").read_text().strip()
    resumed = train(run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warm start large 2/2" in resumed.stderr and "warm start small" not in resumed.stderr
    assert metrics(run_dir) == reference[1]


def test_a_fresh_start_in_a_run_with_checkpoints_is_refused(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    again = train(run_dir)
    assert again.returncode == 2 and "--resume" in again.stderr and "step_000004" in again.stderr


def test_no_checkpoint_is_found_in_leftover_temporary_directories(tmp_path):
    from megatron_codistill.trainer.checkpoint import CheckpointManager

    root = tmp_path / "checkpoints"
    for name in ("step_000002.tmp", "step_000003.old", "step_x", "warmup_12"):
        (root / name).mkdir(parents=True)
        (root / name / "COMPLETE").write_text("{}")
    assert CheckpointManager(tmp_path, rank=0, world_size=1).candidates() == []
    assert CheckpointManager(tmp_path, rank=0, world_size=1).load_latest() is None


def test_a_checkpoint_of_another_layout_names_both(tmp_path):
    from megatron_codistill.trainer.checkpoint import CheckpointManager, LayoutMismatch

    saved = {"world_size": 1, "large": {"tensor_parallel": 1, "pipeline_parallel": 1}}
    CheckpointManager(tmp_path, rank=0, world_size=1, layout=saved).save("step_000001", {"x": 1}, {"step": 1})
    other = {"world_size": 1, "large": {"tensor_parallel": 1, "pipeline_parallel": 2}}
    with pytest.raises(LayoutMismatch) as e:
        CheckpointManager(tmp_path, rank=0, world_size=1, layout=other).load_latest()
    assert "TP=1 PP=1" in str(e.value) and "TP=1 PP=2" in str(e.value)
