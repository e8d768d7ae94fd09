"""Objectives: pure functions on log-probability tensors (torch only; no torch.distributed, no Megatron).

Legend: B prompts, G rollouts per prompt, T tokens, V vocab; rows are prompt-major (b*G + g) and every
[B*G, T] tensor comes with a float mask of response tokens. Formulas: DESIGN.md §2.
"""

from megatron_codistill.algo.advantages import group_whiten, overlong_penalty, process_supervision_advantages
from megatron_codistill.algo.aggregation import AGGREGATIONS, aggregate
from megatron_codistill.algo.importance import SCHEMES, ImportanceWeights, importance_weights
from megatron_codistill.algo.kd import (
    KD_REDUCTIONS,
    align_responses,
    ghost_response_reward,
    kd_log_ratio,
    kd_reward,
    sequence_kd,
    token_kd_advantages,
)
from megatron_codistill.algo.kl import KL_ESTIMATORS, entropy_from_logits, kl_penalty
from megatron_codistill.algo.losses import (
    SurrogateInputs,
    grpo_advantages,
    grpo_loss,
    large_model_advantages,
    large_model_loss,
    sft_loss,
    small_model_advantages,
    small_model_loss,
)
from megatron_codistill.algo.policy_loss import RATIOS, PolicyLossOptions, policy_loss
from megatron_codistill.algo.selection import max_variance_subset, nonconstant_groups
from megatron_codistill.algo.types import LossOutput

__all__ = [
    "AGGREGATIONS",
    "KD_REDUCTIONS",
    "KL_ESTIMATORS",
    "RATIOS",
    "SCHEMES",
    "SurrogateInputs",
    "ImportanceWeights",
    "LossOutput",
    "PolicyLossOptions",
    "aggregate",
    "align_responses",
    "entropy_from_logits",
    "ghost_response_reward",
    "group_whiten",
    "grpo_advantages",
    "grpo_loss",
    "importance_weights",
    "kd_log_ratio",
    "kd_reward",
    "kl_penalty",
    "large_model_advantages",
    "large_model_loss",
    "max_variance_subset",
    "nonconstant_groups",
    "overlong_penalty",
    "policy_loss",
    "process_supervision_advantages",
    "sequence_kd",
    "sft_loss",
    "small_model_advantages",
    "small_model_loss",
    "token_kd_advantages",
]
