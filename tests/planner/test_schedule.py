"""The planner's step time under the three schedules of trainer/scheduler.py."""

import pytest

from megatron_codistill.planner import plan_layouts
from megatron_codistill.planner.timing import schedule_step_time
from tests.planner.test_layouts import RUN_YAML, _parse, _request

TIMES = {"generate": 5.0, "score": 1.0, "update_small": 0.5, "update_large": 3.0, "sync": 0.25}


def test_schedule_step_times_by_hand():
    assert schedule_step_time(TIMES, "sequential") == 9.75
    assert schedule_step_time(TIMES, "overlap") == 1.0 + 0.5 + 0.25 + max(5.0, 3.0)  # G hides U^L
    assert schedule_step_time(TIMES, "async") == max(5.0, 1.0 + 0.5 + 3.0 + 0.25)  # G hides the rest
    assert schedule_step_time({**TIMES, "generate": 1.0}, "overlap") == 1.0 + 0.5 + 0.25 + 3.0
    for schedule in ("overlap", "async"):  # colocated engines share the trainer GPUs: nothing overlaps
        assert schedule_step_time(TIMES, schedule, colocated=True) == 9.75
    with pytest.raises(ValueError, match="valid: \\['sequential', 'overlap', 'async'\\]"):
        schedule_step_time(TIMES, "eager")


def test_plans_follow_the_requested_schedule():
    steps = {}
    for schedule in ("sequential", "overlap", "async"):
        best = plan_layouts(_request(num_gpus=16, rollout_gpus=8, schedule=schedule))[0]
        assert best.step_time == schedule_step_time(best.times, schedule)
        steps[schedule] = best.step_time
    assert steps["async"] <= steps["overlap"] < steps["sequential"]


def test_the_schedule_comes_from_the_run_config_unless_given(tmp_path):
    from megatron_codistill.planner.cli import request_from_args

    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML + "scheduler: {mode: async}\n")
    assert request_from_args(_parse(["--config", str(config), "--gpus", "2"])).schedule == "async"
    assert request_from_args(_parse(["--config", str(config), "--gpus", "2", "--schedule", "sequential"])).schedule \
        == "sequential"
    assert request_from_args(_parse(["1.5B/7B"])).schedule == "overlap"
