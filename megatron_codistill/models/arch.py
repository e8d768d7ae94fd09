"""Architecture of a decoder-only model (Qwen2 / Llama family) as one frozen dataclass.

`ModelArch` is the single description both Megatron (`models.provider`) and Hugging Face
(`to_hf_config`, checkpoint conversion) are built from. HF configs are read through an explicit
registry keyed on `architectures` / `model_type`; anything else is rejected by name.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any

# HF `architectures` entry -> family, and HF `model_type` -> family. Explicit keys, no substring match.
ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
MODEL_TYPES = {"qwen2": "qwen2", "llama": "llama"}
# family -> (architectures entry, whether the attention q/k/v projections carry a bias by default)
FAMILIES = {"qwen2": ("Qwen2ForCausalLM", True), "llama": ("LlamaForCausalLM", False)}
# RoPE scaling types the provider can build; "default" means no scaling.
ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class ModelArch:
    """Architecture fields shared by Qwen2 and Llama (RMSNorm, SwiGLU, RoPE, GQA, no linear bias)."""

    family: str
    """Model family: "qwen2" or "llama" (selects the HF config class and the QKV-bias default)."""
    hidden_size: int
    """Width of the residual stream (HF `hidden_size`)."""
    num_layers: int
    """Number of transformer blocks (HF `num_hidden_layers`)."""
    num_attention_heads: int
    """Query heads per layer."""
    num_key_value_heads: int
    """Key/value heads per layer (GQA groups); divides `num_attention_heads`."""
    ffn_hidden_size: int
    """Inner width of the SwiGLU MLP (HF `intermediate_size`)."""
    vocab_size: int
    """True vocabulary size (Megatron pads it, see `padded_vocab_size`)."""
    max_position_embeddings: int = 4096
    """Longest sequence the RoPE tables are built for, in tokens."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    qkv_bias: bool | None = None
    """Bias on the q/k/v projections; None -> family default (qwen2 True, llama False)."""
    tie_word_embeddings: bool = False
    """Output layer shares the input embedding matrix."""
    head_dim: int | None = None
    """Channels per attention head; None -> hidden_size // num_attention_heads."""
    rope_scaling: dict | None = field(default=None, hash=False)
    """Llama-3 style RoPE scaling {"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}, or None for plain RoPE."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelArch.family={self.family!r} is not supported; valid: {sorted(FAMILIES)}")
        for name in ("hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads",
                     "ffn_hidden_size", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelArch.{name}={value!r} must be a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelArch.num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"ModelArch.hidden_size={self.hidden_size} is not a multiple of num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        default_bias = FAMILIES[self.family][1]
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", default_bias)
        elif self.family == "qwen2" and not self.qkv_bias:
            raise ValueError("ModelArch.qkv_bias=False is not valid for family 'qwen2' (Qwen2 always has it)")
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", _check_rope_scaling(self.rope_scaling, "rope_scaling"))

    # ------------------------------------------------------------------ HF in / out
    @classmethod
    def from_hf_config(cls, cfg: Any) -> ModelArch:
        """Read a HF `PretrainedConfig`, its `to_dict()`, a config.json path or a directory holding one."""
        where = "config"
        if isinstance(cfg, (str, os.PathLike)):
            path = os.path.join(cfg, "config.json") if os.path.isdir(cfg) else os.fspath(cfg)
            if not os.path.isfile(path):
                raise ValueError(f"no HF config at {path!r} (give a model directory or a config.json)")
            with open(path) as f:
                cfg, where = json.load(f), path
        elif hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        if not isinstance(cfg, dict):
            raise ValueError(
                f"from_hf_config needs a PretrainedConfig, dict or path, got {type(cfg).__name__}")
        family = _family_of(cfg, where)
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{where}: hidden_act={cfg['hidden_act']!r} is not supported; valid: 'silu'")
        if cfg.get("mlp_bias"):
            raise ValueError(f"{where}: mlp_bias=True is not supported (Megatron spec has no MLP bias)")
        if cfg.get("use_sliding_window"):
            raise ValueError(f"{where}: use_sliding_window=True is not supported; valid: False")
        theta, scaling = _read_rope(cfg, where)
        heads = cfg["num_attention_heads"]
        return cls(
            family=family,
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            ffn_hidden_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            rope_theta=float(theta),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            qkv_bias=True if family == "qwen2" else bool(cfg.get("attention_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=cfg.get("head_dim") or None,
            rope_scaling=scaling,
        )

    def to_hf_config(self):
        """The equivalent `transformers` config (Qwen2Config or LlamaConfig)."""
        from transformers import LlamaConfig, Qwen2Config

        config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[self.family]
        kwargs: dict[str, Any] = dict(
            architectures=[FAMILIES[self.family][0]], hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, intermediate_size=self.ffn_hidden_size,
            vocab_size=self.vocab_size, max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_word_embeddings, hidden_act="silu",
        )
        if self.family == "llama":
            kwargs.update(attention_bias=self.qkv_bias, mlp_bias=False, head_dim=self.head_dim)
        rope = dict(self.rope_scaling or {"rope_type": "default"})
        if "rope_parameters" in inspect.signature(config_cls.__init__).parameters:
            # transformers >= 5 folds theta and scaling into one `rope_parameters` dict
            kwargs["rope_parameters"] = {**rope, "rope_theta": self.rope_theta}
        else:  # transformers 4.x
            kwargs.update(rope_theta=self.rope_theta, rope_scaling=self.rope_scaling and dict(rope))
        hf = config_cls(**kwargs)
        if self.family == "qwen2" and self.head_dim != self.hidden_size // self.num_attention_heads:
            hf.head_dim = self.head_dim  # Qwen2Attention reads getattr(config, "head_dim", hidden // heads)
        return hf

    # ------------------------------------------------------------------ layout and size
    def validate_layout(self, tp: int, pp: int) -> None:
        """Raise ValueError unless tensor parallel size `tp` and pipeline size `pp` fit this model."""
        for name, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("num_attention_heads", "num_key_value_heads", "ffn_hidden_size"):
            value = getattr(self, name)
            if value % tp:
                raise ValueError(
                    f"tensor_model_parallel_size={tp} must divide {name}={value}; "
                    f"valid tensor_model_parallel_size: {self._valid_tp()}")
        if pp > self.num_layers or self.num_layers % pp:
            valid = [d for d in range(1, self.num_layers + 1) if self.num_layers % d == 0]
            raise ValueError(
                f"pipeline_model_parallel_size={pp} must divide num_layers={self.num_layers} "
                f"(and not exceed it); valid pipeline_model_parallel_size: {valid}")

    def _valid_tp(self) -> list[int]:
        sizes = (self.num_attention_heads, self.num_key_value_heads, self.ffn_hidden_size)
        return [d for d in range(1, self.num_key_value_heads + 1) if all(s % d == 0 for s in sizes)]

    def padded_vocab_size(self, tp: int, multiple: int = 128) -> int:
        """Vocab padded up to a multiple of `multiple * tp` (Megatron's convention: equal shards)."""
        step = multiple * tp
        return -(-self.vocab_size // step) * step

    def num_parameters(self) -> int:
        """Parameters of the HF model (unpadded vocab; tied embeddings counted once)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        mlp = 3 * h * self.ffn_hidden_size
        per_layer = attn + mlp + 2 * h  # two RMSNorm weights
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_layers * per_layer + h  # final norm

    def replace(self, **changes: Any) -> ModelArch:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _family_of(cfg: dict, where: str) -> str:
    supported = f"supported architectures: {sorted(ARCHITECTURES)} (model_type {sorted(MODEL_TYPES)})"
    archs = cfg.get("architectures") or []
    for name in archs:
        if name not in ARCHITECTURES:
            raise ValueError(f"{where}: architecture {name!r} is not supported; {supported}")
    if archs:
        return ARCHITECTURES[archs[0]]
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported; {supported}")
    return MODEL_TYPES[model_type]


def _read_rope(cfg: dict, where: str) -> tuple[float, dict | None]:
    """(theta, scaling) from transformers>=5 `rope_parameters` or 4.x `rope_theta` + `rope_scaling`."""
    params = dict(cfg.get("rope_parameters") or {})
    theta = params.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = params or cfg.get("rope_scaling") or None
    if scaling is not None:
        scaling = _check_rope_scaling(scaling, f"{where}: rope scaling")
    return theta, scaling


def _check_rope_scaling(scaling: dict, where: str) -> dict | None:
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    scaling.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{where}: rope_type {rope_type!r} is not supported; valid: {list(ROPE_TYPES)}")
    if rope_type == "default":
        return None
    missing = [k for k in _LLAMA3_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"{where}: llama3 rope scaling misses {missing}; it needs {list(_LLAMA3_KEYS)}")
    return {"rope_type": "llama3", **{k: scaling[k] for k in _LLAMA3_KEYS}}
