"""Hugging Face <-> Megatron-Core checkpoints and weights for Qwen2 and Llama at any TP/PP.

- `mapping`: the one name/layout table per family (also used by the weight sync to rollout engines);
- `convert_hf_to_mcore` / `convert_mcore_to_hf`: streaming directory conversions (CLI: `cli.py`);
- `load_hf_into_model` / `load_mcore_into_model` / `save_mcore_checkpoint`: live sharded models;
- `export_hf_weights`: full HF-named tensors from a live sharded model, in buckets.
"""

from megatron_codistill.convert.errors import CheckpointError
from megatron_codistill.convert.export import export_hf_weights
from megatron_codistill.convert.hf_to_mcore import convert_hf_to_mcore
from megatron_codistill.convert.mcore_to_hf import convert_mcore_to_hf
from megatron_codistill.convert.model_io import load_hf_into_model, load_mcore_into_model, save_mcore_checkpoint

__all__ = ["CheckpointError", "convert_hf_to_mcore", "convert_mcore_to_hf", "export_hf_weights",
           "load_hf_into_model", "load_mcore_into_model", "save_mcore_checkpoint"]
