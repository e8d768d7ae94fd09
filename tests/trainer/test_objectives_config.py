"""Settings of reference-conditioned KD, process supervision and learned reward models that cannot run are
refused when the config is validated, before any compute, with the key and the fix."""

import pytest

from megatron_codistill.config import ConfigError, load_config, validate
from tests.trainer.conftest import FAST, TINY

MODELS = TINY.parent / "reward_models"


def check(*overrides):
    validate(load_config(TINY, [*FAST, *overrides]), 1)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.kd_reference=gold", "algorithm.mode=grpo"], "kd_reference=gold conditions the large model's KD"),
    (["algorithm.kd_reference=gold", "algorithm.kd_context='{prompt}'"], r"kd_context must hold \{reference\} once"),
    (["algorithm.kd_reference=teacher", "rollout.engine=sglang", "rollout.sglang.urls=[http://x:1]"],
     "kd_reference=teacher samples the large model in this process"),
    (["algorithm.kd_reference=gold", "rollout.prompt_overflow=truncate_left"], "prompt_overflow must be error"),
    (["algorithm.supervision=process", "reward.kind=math"], "the 'math' reward has no exact step checker"),
    (["algorithm.supervision=process", "reward.kind=arith", "algorithm.mode=opd"], "needs a task reward"),
    (["algorithm.supervision=process", "reward.kind=arith", "algorithm.step_delimiters=[]"], "step_delimiters"),
    (["reward.kind=model", "reward.model=null"], "reward.kind=model needs reward.model"),
    (["reward.kind=model", f"reward.model={MODELS / 'outcome'}", "algorithm.pods_n=6"], "pods_n selects rollouts"),
    (["reward.retrain.every=2"], r"trains the one learned reward model in use; this run uses none"),
    (["reward.kind=model", f"reward.model={MODELS / 'outcome'}", "reward.retrain.every=2",
      "reward.retrain.replay_frac=1.0"], "0 <= replay_frac < 1"),
    (["reward.kind=model", f"reward.model={MODELS / 'outcome'}", "reward.verifier=math", "reward.retrain.every=1",
      "algorithm.supervision=process", f"reward.process_model={MODELS / 'process'}"],
     r"this run uses \['reward.model', 'reward.process_model'\]"),
    (["reward.kind=math", "algorithm.supervision=process", f"reward.process_model={MODELS / 'process'}",
      "reward.retrain.every=1"], "learns from exact step labels, which the 'math' reward has none of"),
    (["reward.kind=model", f"reward.model={MODELS / 'outcome'}", "reward.retrain.every=1",
      "reward.retrain.reset_reference=true"], r"needs reward.retrain.every > 0 \(got 1\) and algorithm.kl_beta > 0"),
])
def test_refused_before_compute(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(*overrides)


def test_valid_settings_pass():
    check("algorithm.kd_reference=teacher", "algorithm.kd_context='{reference};{prompt}'")
    check("algorithm.supervision=process", "reward.kind=arith")
    check("algorithm.supervision=process", "reward.kind=math", f"reward.process_model={MODELS / 'process'}")
    check("reward.kind=model", f"reward.model={MODELS / 'outcome'}", "reward.retrain.every=3",
          "reward.retrain.reset_reference=true", "algorithm.kl_beta=0.05")


def test_reward_model_paths_are_relative_to_the_yaml():
    cfg = load_config(TINY, ["reward.model=./reward_models/outcome", "reward.process_model=./reward_models/process"])
    assert cfg.reward.model == str(MODELS / "outcome") and cfg.reward.process_model == str(MODELS / "process")
