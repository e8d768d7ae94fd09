"""Megatron-Core runtime: two models with different layouts in one SPMD job, on CPU (gloo) or GPU.

- cpu_patches: the patch set that lets Megatron-Core 0.16+ run without CUDA (no-op on GPU)
- layout:      init_distributed, ModelLayout, build_layouts (large TP x PP x DP, small DP)
- logprobs:    vocab-parallel log-probs / entropy; forward_logprobs for any layout
- schedule:    micro-batches (fixed rows or a token budget) through Megatron's forward-backward
               schedule (1F1B when PP > 1)
- train_step:  one optimizer step with a caller-supplied per-token loss
- optimizer:   Megatron DDP + optimizer + lr schedule per model; per-rank checkpoint state
"""
