"""Capacity planning for a (small, large) model pair on a GPU cluster: memory per GPU by role and
step time by phase for every TP x PP x DP layout of the large model (`codistill plan`)."""

from megatron_codistill.planner.hardware import GPUS, GPUSpec, get_gpu
from megatron_codistill.planner.plan import LayoutPlan, PlanRequest, evaluate_layout, plan_layouts
from megatron_codistill.planner.presets import PAIRS, PRESETS, load_model, load_pair

__all__ = ["GPUS", "GPUSpec", "get_gpu", "LayoutPlan", "PlanRequest", "evaluate_layout", "plan_layouts",
           "PAIRS", "PRESETS", "load_model", "load_pair"]
