"""Megatron-Core GPTModel from a `ModelArch`: TransformerConfig, layer spec, model.

One code path for both families and every layout: Qwen2 and Llama differ only in `ModelArch`
fields (QKV bias, tied embeddings, RoPE base/scaling). The layer spec is chosen as data: the local
Megatron spec on CPU, the Transformer Engine spec when TE and CUDA are present.

Written against megatron-core 0.16.1 and checked against the 0.19 API (same GPTModel,
TransformerConfig fields and spec functions); version differences are feature-detected.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

from megatron_codistill.models.arch import ModelArch

TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
FP8_FORMATS = ("e4m3", "hybrid")
RECOMPUTE = ("none", "selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")
# Megatron's RotaryEmbedding._apply_scaling hard-codes these llama3 constants (0.16.1 .. 0.19).
_MEGATRON_LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@functools.cache
def te_available() -> bool:
    """Transformer Engine's PyTorch modules import."""
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception:  # noqa: BLE001 - a broken TE install counts as absent
        return False
    return True


def resolve_transformer_impl(transformer_impl: str) -> str:
    """"auto" -> "transformer_engine" with TE and CUDA, else "local"; explicit choices are checked."""
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ValueError(
            f"transformer_impl={transformer_impl!r} is not valid; valid: {list(TRANSFORMER_IMPLS)}")
    has_te = te_available() and torch.cuda.is_available()
    if transformer_impl == "auto":
        return "transformer_engine" if has_te else "local"
    if transformer_impl == "transformer_engine" and not has_te:
        raise ValueError(
            "transformer_impl='transformer_engine' needs Transformer Engine and CUDA "
            f"(TE importable: {te_available()}, CUDA: {torch.cuda.is_available()}); "
            "install the `gpu` extra or use transformer_impl='local'")
    return transformer_impl


def transformer_config(arch: ModelArch, *, tp: int, pp: int, params_dtype: torch.dtype,
                       fp8: str | None = None, transformer_impl: str = "auto", **overrides):
    """Megatron TransformerConfig for `arch` at tensor/pipeline sizes (tp, pp).

    fp8: FP8 format ("e4m3" | "hybrid") or None; needs Transformer Engine. The recipe is
    Megatron's `fp8_recipe` field (default "delayed"), settable through `overrides`, which are
    passed to TransformerConfig last (e.g. recompute_granularity, fusions on GPU).
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    arch.validate_layout(tp, pp)
    impl = resolve_transformer_impl(transformer_impl)
    if fp8 is not None:
        if fp8 not in FP8_FORMATS:
            raise ValueError(f"fp8={fp8!r} is not a valid FP8 format; valid: {list(FP8_FORMATS)} or None")
        if not te_available() or impl != "transformer_engine":
            raise ValueError(
                f"fp8={fp8!r} needs Transformer Engine (the transformer_engine layer spec on CUDA); "
                f"here TE importable: {te_available()}, transformer_impl resolved to {impl!r}")
    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_key_value_heads,
        kv_channels=arch.head_dim, ffn_hidden_size=arch.ffn_hidden_size,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True, activation_func=F.silu,  # SwiGLU: silu(gate) * up
        add_bias_linear=False, add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0, attention_dropout=0.0,
        params_dtype=params_dtype, pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16, fp16=params_dtype == torch.float16,
        # CPU init draws each full weight from the CPU RNG and keeps this rank's shard (no CUDA
        # RNG tracker involved); on GPU the tracker is seeded by parallel.layout.build_layouts.
        use_cpu_initialization=not on_gpu,
        # Fused kernels exist only on GPU; off by default everywhere so CPU and GPU agree.
        bias_activation_fusion=False, masked_softmax_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        batch_p2p_sync=on_gpu,  # the sync is torch.cuda.synchronize()
        variable_seq_lengths=False,
        transformer_impl=impl,
    )
    if fp8 is not None:
        kwargs["fp8"] = fp8
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def recompute_options(recompute: str, *, method: str | None = None, num_layers: int | None = None,
                      layers_per_stage: int) -> dict:
    """TransformerConfig fields of an activation-recompute choice (ValueError for what Megatron refuses).

    none: keep every activation. selective: Megatron's default selective set, core attention (the
    local spec's unfused attention then drops its T x T scores; with TE's fused attention it saves
    little). full: recompute whole layers from checkpointed inputs; method "uniform" (default)
    checkpoints every `num_layers` layers (default 1, must divide the stage's layers), "block"
    checkpoints the first `num_layers` layers of each pipeline stage (default all) and keeps the rest.
    """
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute={recompute!r} is not valid; valid: {list(RECOMPUTE)}")
    if recompute != "full":
        if method is not None or num_layers is not None:
            raise ValueError(f"recompute_method ({method!r}) and recompute_num_layers ({num_layers!r}) apply only "
                             f"to recompute='full', got recompute={recompute!r}; leave them unset")
        return {} if recompute == "none" else {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    method = method or "uniform"
    if method not in RECOMPUTE_METHODS:
        raise ValueError(f"recompute_method={method!r} is not valid; valid: {list(RECOMPUTE_METHODS)}")
    if num_layers is None:
        num_layers = 1 if method == "uniform" else layers_per_stage
    if not 1 <= num_layers <= layers_per_stage:
        raise ValueError(f"recompute_num_layers ({num_layers}) must be between 1 and the layers per pipeline "
                         f"stage ({layers_per_stage})")
    if method == "uniform" and layers_per_stage % num_layers:
        raise ValueError(f"recompute_num_layers ({num_layers}) must divide the layers per pipeline stage "
                         f"({layers_per_stage}) with recompute_method='uniform' (Megatron recomputes chunks of "
                         "that many layers); use a divisor or recompute_method='block'")
    return {"recompute_granularity": "full", "recompute_method": method, "recompute_num_layers": num_layers}


def layer_spec(arch: ModelArch, transformer_impl: str = "auto"):
    """ModuleSpec of one transformer layer: local Megatron modules or Transformer Engine ones."""
    from megatron.core.models.gpt import gpt_layer_specs

    impl = resolve_transformer_impl(transformer_impl)
    if impl == "transformer_engine":
        # TE's fused norm follows config.normalization ("RMSNorm")
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=False)
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=False)


def build_gpt_model(arch: ModelArch, *, pg_collection, pre_process: bool, post_process: bool,
                    params_dtype: torch.dtype = torch.float32, transformer_impl: str = "auto",
                    fp8: str | None = None, seq_length: int | None = None, recompute: str = "none",
                    recompute_method: str | None = None, recompute_num_layers: int | None = None,
                    device: torch.device | str | None = None):
    """GPTModel for this rank's shard: TP and PP sizes are read from `pg_collection`.

    recompute, recompute_method, recompute_num_layers: activation recomputation (`recompute_options`).
    fp8: TE's amax reduction runs over this model's TP x DP x CP group (`models.fp8`), never the job.
    device: where the module lives (`model_device`): the current CUDA device on GPU machines.

    Vocab is padded to `arch.padded_vocab_size(tp)` (padded logit columns must be masked, see
    parallel.logprobs); the output stays vocab-parallel (parallel_output=True): logits [B, T, V/tp].
    The returned model carries `model.arch` (read by parallel.logprobs for the true vocab size).
    """
    from megatron.core.models.gpt import GPTModel

    tp, pp = pg_collection.tp.size(), pg_collection.pp.size()
    impl = resolve_transformer_impl(transformer_impl)
    arch.validate_layout(tp, pp)
    recompute_kwargs = recompute_options(recompute, method=recompute_method, num_layers=recompute_num_layers,
                                         layers_per_stage=arch.num_layers // pp)
    config = transformer_config(arch, tp=tp, pp=pp, params_dtype=params_dtype, fp8=fp8,
                                transformer_impl=impl, **recompute_kwargs)
    if fp8 is not None:
        from megatron_codistill.models.fp8 import bind_amax_group

        bind_amax_group(config, pg_collection)
    if impl == "local":
        _ensure_global_memory_buffer()
    model = GPTModel(
        config=config, transformer_layer_spec=layer_spec(arch, impl),
        vocab_size=arch.padded_vocab_size(tp), max_sequence_length=seq_length or arch.max_position_embeddings,
        pre_process=pre_process, post_process=post_process, parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope", rotary_base=arch.rope_theta, **_rope_scaling_kwargs(arch),
        pg_collection=pg_collection,
    )
    model.arch = arch  # the true vocab size and architecture travel with the model
    _cast_parameters(model, params_dtype)
    target = model_device(device)
    if target is not None:
        model.to(target)
    return model


def model_device(device: torch.device | str | None = None) -> torch.device | None:
    """Where build_gpt_model puts the module: `device` when given, else the current CUDA device when
    CUDA is available (TE layers allocate there by themselves, the local spec's norms and embeddings
    do not), else None: the module stays on the CPU where it was built."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _cast_parameters(model, dtype: torch.dtype) -> None:
    """Every parameter in `dtype`, as Megatron's Float16Module casts the whole module for bf16/fp16:
    the local spec's torch norms are created in fp32 whatever params_dtype says (mixed-dtype norms
    run unfused and hand fp32 activations to bf16 matmuls). The optimizer keeps fp32 master copies."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


def _rope_scaling_kwargs(arch: ModelArch) -> dict:
    if arch.rope_scaling is None:
        return {}
    for key, value in _MEGATRON_LLAMA3.items():
        if float(arch.rope_scaling[key]) != value:
            raise ValueError(
                f"rope_scaling.{key}={arch.rope_scaling[key]} is not supported: Megatron-Core's llama3 "
                f"RoPE scaling is fixed to {_MEGATRON_LLAMA3}; only `factor` may vary")
    return {"rope_scaling": True, "rope_scaling_factor": float(arch.rope_scaling["factor"])}


def _ensure_global_memory_buffer() -> None:
    """The local spec's DotProductAttention takes its score buffer from parallel_state's global
    memory buffer, which only initialize_model_parallel creates; we never call that."""
    from megatron.core import parallel_state

    if getattr(parallel_state, "_GLOBAL_MEMORY_BUFFER", None) is None:
        parallel_state._set_global_memory_buffer()
