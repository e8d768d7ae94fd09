"""Task rewards: math answers verified in worker processes that never hang, the R1-Zero format reward,
user plug-ins by import path and learned reward models on token ids.

Entry point: `score_math(responses, references) -> list[float]`; `verify_batch` also gives reasons.
"""

from megatron_codistill.rewards.base import RewardFn, RewardResult
from megatron_codistill.rewards.extract import Extraction, extract_answer, last_boxed, reference_answer
from megatron_codistill.rewards.format_reward import R1RewardWeights, format_parts, r1_reward, score_r1
from megatron_codistill.rewards.learned import LearnedReward, TokenRewardModel
from megatron_codistill.rewards.math_reward import (
    configure_default_pool,
    default_pool,
    math_reward,
    score_math,
    shutdown_default_pool,
    verify_batch,
)
from megatron_codistill.rewards.normalize import normalize_answer
from megatron_codistill.rewards.plugins import REWARD_FUNCTIONS, load_reward_fn, register_reward_fn
from megatron_codistill.rewards.pool import VerifierPool

__all__ = [
    "REWARD_FUNCTIONS",
    "Extraction",
    "LearnedReward",
    "R1RewardWeights",
    "RewardFn",
    "RewardResult",
    "TokenRewardModel",
    "VerifierPool",
    "configure_default_pool",
    "default_pool",
    "extract_answer",
    "format_parts",
    "last_boxed",
    "load_reward_fn",
    "math_reward",
    "normalize_answer",
    "r1_reward",
    "reference_answer",
    "register_reward_fn",
    "score_math",
    "score_r1",
    "shutdown_default_pool",
    "verify_batch",
]
