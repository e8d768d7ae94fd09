"""FP8 amax reduction over a model's own ranks, not over the whole job.

Transformer Engine's delayed-scaling recipe all-reduces the amax history of every FP8 tensor when
the outermost `fp8_autocast` exits, over its `fp8_group` (None: every rank of the job). Megatron-Core
passes `parallel_state.get_amax_reduction_group(with_context_parallel=True)`, the TP x DP x CP ranks
that hold the same layers, but only once `parallel_state` is initialised, which this project never
does (each model has its own ProcessGroupCollection). Left at None, with PP > 1 stage 0 blocks in that
all-reduce before it sends its activations to stage 1, which waits for them: a deadlock.

`bind_amax_group(config, pg_collection)` records the model's group on its TransformerConfig and
routes Megatron's `get_fp8_context` (what TransformerBlock enters around its layers) through
`fp8_context`, which builds the same autocast with that group. Written against megatron-core 0.16.1
(`fp8_utils.get_fp8_context(config, layer_no, is_init)`, same in 0.19).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext

_ATTR = "_codistill_amax_groups"


def amax_reduction_group(pg_collection, *, tp_only: bool = False):
    """The ranks that reduce FP8 amaxes together: TP x DP x CP (Megatron's default), or TP x CP with
    `tp_only` (TransformerConfig.tp_only_amax_red). Never across pipeline stages."""
    return pg_collection.tp_cp if tp_only else pg_collection.tp_dp_cp


class _Groups:
    """A model's amax-reduction groups on its config; deep copies of the config share them."""

    def __init__(self, pg_collection) -> None:
        self.default = amax_reduction_group(pg_collection)
        self.tp_only = amax_reduction_group(pg_collection, tp_only=True)

    def __deepcopy__(self, memo):  # process groups cannot be copied; a reference model uses the same ranks
        return self


def bind_amax_group(config, pg_collection) -> None:
    """Make every FP8 autocast of the model built from `config` reduce amaxes over its own group."""
    setattr(config, _ATTR, _Groups(pg_collection))
    _route_megatron()


def fp8_context(config, layer_no: int = -1, is_init: bool = False):
    """Megatron's `get_fp8_context` with the model's own amax group (see the module docstring)."""
    from megatron.core import fp8_utils

    if is_init or not config.fp8:  # fp8_model_init takes no group; bf16 layers need no context
        return _MEGATRON_FP8_CONTEXT(config, layer_no, is_init)
    groups = getattr(config, _ATTR, None)
    if groups is None:
        raise RuntimeError(
            "an FP8 model without its amax-reduction group: build it with models.provider.build_gpt_model "
            "(parallel_state is never initialised here, so TE would reduce amaxes over every rank of the job)")
    if fp8_utils.is_first_last_bf16_layer(config, layer_no):
        return nullcontext()
    import transformer_engine.pytorch as te

    group = groups.tp_only if config.tp_only_amax_red else groups.default
    return te.fp8_autocast(enabled=True, fp8_recipe=fp8_utils.get_fp8_recipe(config), fp8_group=group)


_MEGATRON_FP8_CONTEXT = None


def _route_megatron() -> None:
    """Point every megatron.core module that imported `get_fp8_context` at `fp8_context` (once)."""
    global _MEGATRON_FP8_CONTEXT
    import megatron.core.transformer.transformer_block  # noqa: F401 - the caller that matters for GPT
    from megatron.core import fp8_utils

    if _MEGATRON_FP8_CONTEXT is None:
        _MEGATRON_FP8_CONTEXT = fp8_utils.get_fp8_context
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("megatron.core") and getattr(module, "get_fp8_context", None) is _MEGATRON_FP8_CONTEXT:
            module.get_fp8_context = fp8_context
