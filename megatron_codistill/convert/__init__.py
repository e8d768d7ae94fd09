"""Hugging Face <-> Megatron-Core checkpoints and weights for Qwen2 and Llama at any TP/PP.

- `mapping`: the one name/layout table per family (also used by the weight sync to rollout engines);
- `convert_hf_to_mcore` / `convert_mcore_to_hf`: streaming directory conversions (CLI: `cli.py`);
- `load_hf_into_model` / `load_mcore_into_model` / `save_mcore_checkpoint`: live sharded models;
- `export_hf_weights`: full HF-named tensors from a live sharded model, in buckets.

Names are imported on first use, so `convert.cli` (and `codistill --help`) loads no Megatron code.
"""

import importlib

_EXPORTS = {
    "CheckpointError": "errors",
    "convert_hf_to_mcore": "hf_to_mcore",
    "convert_mcore_to_hf": "mcore_to_hf",
    "export_hf_weights": "export",
    "load_hf_into_model": "model_io",
    "load_mcore_into_model": "model_io",
    "save_mcore_checkpoint": "model_io",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
