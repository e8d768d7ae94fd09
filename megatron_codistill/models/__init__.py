"""Model descriptions and builders: ModelArch (Qwen2 / Llama fields, HF config in and out) and the
Megatron GPTModel provider (TransformerConfig, layer spec, model)."""
