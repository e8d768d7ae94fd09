"""Make Megatron-Core run on CPU with gloo: the project's one set of monkeypatches.

Megatron-Core (checked on 0.16.1; the same call sites exist in 0.19) assumes CUDA in a few places
even when every tensor lives on the CPU. `apply_cpu_patches()` replaces exactly those, only when
CUDA is absent, once per process. Each patch is a small function below; its docstring names the
Megatron call path that needs it, and `tests/parallel/test_cpu_patches.py` checks the behaviour
it enables.

| patch                     | changes                                          | needed by                 |
|---------------------------|--------------------------------------------------|---------------------------|
| patch_current_device      | torch.cuda.current_device() -> "cpu"             | RoPE, DDP, PP p2p, attn   |
| patch_rng_tracker_fork    | CudaRNGStatesTracker.fork -> no-op context       | attention forward, TP init|
| patch_default_causal_mask | default causal mask built on the CPU             | attention_mask=None       |
| patch_schedule_tensors    | schedules' device="cuda" counters -> CPU         | get_forward_backward_func |
| patch_optimizer_tensors   | optimizer device="cuda" literals -> CPU          | MegatronOptimizer.step    |
| patch_grad_l2_norm        | multi-tensor L2 norm returns a CPU tensor        | grad-norm for clipping    |
| patch_tensor_type_checks  | Tensor.type() says "torch.cuda.*" to optimizer   | clip_grads, dist. opt.    |
| patch_tensor_cuda_calls   | Tensor.cuda() from Megatron returns the tensor   | tied embeddings with PP>1 |
| patch_checkpoint_rng      | recompute saves/restores CPU RNG + tracker only  | activation recompute      |
| patch_p2p_shape_sync      | P2P shape exchange skips torch.cuda.synchronize  | PP with variable shapes   |

Global state outside Megatron that is touched: `torch.cuda.current_device` (it raises without
CUDA, so nothing that worked before changes), `torch.Tensor.type` (the answer changes only for
callers whose module is `megatron.core.optimizer.*`) and `torch.Tensor.cuda` (changed only for
callers in `megatron.core`). Dropout inside tensor-parallel regions draws
from the default CPU generator (the CUDA RNG tracker has no CPU counterpart); the models here use
dropout 0.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import sys

import torch

logger = logging.getLogger(__name__)

_APPLIED: set[str] = set()


class _CpuTorch:
    """Stand-in for the `torch` name inside one Megatron module: device="cuda" becomes "cpu"."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _cpu(kwargs: dict) -> dict:
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = "cpu"
        return kwargs

    def tensor(self, *args, **kwargs):
        return torch.tensor(*args, **self._cpu(kwargs))

    def zeros(self, *args, **kwargs):
        return torch.zeros(*args, **self._cpu(kwargs))

    def empty(self, *args, **kwargs):
        return torch.empty(*args, **self._cpu(kwargs))

    def ones(self, *args, **kwargs):
        return torch.ones(*args, **self._cpu(kwargs))


class _CpuCuda:
    """Stand-in for `torch.cuda` inside one Megatron module: synchronize() is a no-op."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def synchronize(*args, **kwargs) -> None:
        return None


class _CpuTorchNoSync(_CpuTorch):
    cuda = _CpuCuda()


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        logger.warning("CPU patch target %s is missing in this Megatron-Core version; skipped", name)
        return None


def _set_module_torch(*names: str) -> None:
    for name in names:
        module = _module(name)
        if module is not None and hasattr(module, "torch"):
            module.torch = _CpuTorch()


def _cpu_current_device() -> str:
    return "cpu"


def patch_current_device() -> None:
    """torch.cuda.current_device() -> "cpu".

    Megatron passes `device=torch.cuda.current_device()` when it allocates: RotaryEmbedding.forward
    (inv_freq), DDP's ParamAndGradBuffer (grad buffers), PP p2p receive buffers, the global memory
    buffer that DotProductAttention uses for its score matrix, and TP gather buffers.
    """
    torch.cuda.current_device = _cpu_current_device


def patch_rng_tracker_fork() -> None:
    """CudaRNGStatesTracker.fork() becomes a no-op context.

    DotProductAttention.forward wraps its dropout in `get_cuda_rng_tracker().fork()` on every call
    (without sequence parallel), and TP layers fork around weight init; the real fork saves and
    restores CUDA RNG state and raises unless model_parallel_cuda_manual_seed (CUDA only) ran.
    """
    from megatron.core.tensor_parallel import random as mrandom

    def fork(self, name=None):
        return contextlib.nullcontext()

    mrandom.CudaRNGStatesTracker.fork = fork


@functools.cache
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    """[sq, sq] bool, True above the diagonal = masked out (Megatron's convention)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def patch_default_causal_mask() -> None:
    """get_default_causal_mask builds its [T, T] mask on the CPU.

    FusedScaleMaskSoftmax.forward_torch_softmax calls it when a causal layer gets
    attention_mask=None (the local spec); the original allocates on device="cuda".
    """
    for name in ("megatron.core.transformer.utils", "megatron.core.fusions.fused_softmax"):
        module = _module(name)
        if module is not None and hasattr(module, "get_default_causal_mask"):
            module.get_default_causal_mask = _cpu_causal_mask


def patch_schedule_tensors() -> None:
    """The pipeline schedules' `torch.zeros([], device="cuda")` token counter goes to the CPU.

    forward_backward_no_pipelining and forward_backward_pipelining_without_interleaving (what
    get_forward_backward_func returns) allocate it on every call, forward-only included.
    """
    _set_module_torch("megatron.core.pipeline_parallel.schedules")


def patch_optimizer_tensors() -> None:
    """device="cuda" literals in Megatron's optimizer modules go to the CPU.

    FP32Optimizer/MixedPrecisionOptimizer keep scale and found_inf tensors, clip_grads builds
    total-norm and num-zeros buffers, DistributedOptimizer allocates shard buffers: all in
    MegatronOptimizer.step (get_grad_norm_fp32, clip_grad_by_total_norm_fp32, count_zeros_fp32).
    """
    _set_module_torch("megatron.core.optimizer.optimizer", "megatron.core.optimizer.clip_grads",
                      "megatron.core.optimizer.distrib_optimizer")


def _cpu_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Same contract as megatron.core.utils.local_multi_tensor_l2_norm: ([1] float norm, None)."""
    tensors = [t for group in tensor_lists for t in group]
    if not tensors:
        return torch.zeros(1), None
    norms = torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    return torch.linalg.vector_norm(norms).reshape(1), None


def patch_grad_l2_norm() -> None:
    """clip_grads' fallback L2-norm kernel (no Apex/TE) returns a CPU tensor.

    get_grad_norm_fp32 -> multi_tensor_applier(l2_norm_impl, ...) -> local_multi_tensor_l2_norm,
    which builds its result with device="cuda" in megatron.core.utils.
    """
    clip = _module("megatron.core.optimizer.clip_grads")
    if clip is not None:
        clip.l2_norm_impl = _cpu_l2_norm


def patch_tensor_type_checks() -> None:
    """Tensor.type() answers "torch.cuda.FloatTensor" (etc.) to callers in megatron.core.optimizer.

    clip_grad_by_total_norm_fp32 asserts `grad.type() == 'torch.cuda.FloatTensor'`, and
    DistributedOptimizer / Float16Optimizer sort params by `param.type()` into fp32 / half groups.
    Other callers see the true CPU type names.
    """
    original = torch.Tensor.type

    def type_(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if args or kwargs or not isinstance(result, str) or ".cuda." in result:
            return result
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("megatron.core.optimizer"):
            return result.replace("torch.", "torch.cuda.", 1)
        return result

    type_.__wrapped__ = original
    torch.Tensor.type = type_


def patch_tensor_cuda_calls() -> None:
    """Tensor.cuda() called from megatron.core returns the tensor unchanged (other callers still
    get torch's error without CUDA).

    LanguageModule.setup_embeddings_and_output_layer runs `weight.data = weight.data.cuda()` before
    all-reducing tied embeddings over the embd group when PP > 1 (first and last stage hold copies).
    """
    original = torch.Tensor.cuda

    def cuda(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("megatron.core"):
            return self
        return original(self, *args, **kwargs)

    cuda.__wrapped__ = original
    torch.Tensor.cuda = cuda


def _cpu_rng_states():
    """(cpu state, no CUDA state, tracker states): what Megatron's checkpoint saves before a forward."""
    from megatron.core.tensor_parallel import random as mrandom

    return torch.get_rng_state(), None, mrandom.get_cuda_rng_tracker().get_states()


def _set_cpu_rng_states(cpu_rng_state, cuda_rng_state, cuda_rng_state_tracker):
    from megatron.core.tensor_parallel import random as mrandom

    torch.set_rng_state(cpu_rng_state)
    mrandom.get_cuda_rng_tracker().set_states(cuda_rng_state_tracker)


def patch_checkpoint_rng() -> None:
    """Activation recompute saves and restores the CPU RNG and the tracker, not the CUDA RNG.

    tensor_parallel.CheckpointFunction (full recompute, selective core_attn / mlp) and
    CheckpointWithoutOutput (selective layernorm) call _get_all_rng_states / _set_all_rng_states,
    which read torch.cuda's generator and raise without CUDA. The recomputed forward then draws the
    same CPU random numbers as the first one (none with dropout 0).
    """
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_all_rng_states = _cpu_rng_states
    mrandom._set_all_rng_states = _set_cpu_rng_states


def patch_p2p_shape_sync() -> None:
    """The pipeline's shape exchange does not call torch.cuda.synchronize().

    With config.variable_seq_lengths (micro-batches of different shapes, see parallel.schedule),
    P2PCommunicator._communicate_shapes sends each activation's shape before it and then calls
    torch.cuda.synchronize() unconditionally (the tensor exchange itself guards it with batch_p2p_sync).
    """
    module = _module("megatron.core.pipeline_parallel.p2p_communication")
    if module is not None and hasattr(module, "torch"):
        module.torch = _CpuTorchNoSync()


PATCHES = {
    "current_device": patch_current_device,
    "rng_tracker_fork": patch_rng_tracker_fork,
    "default_causal_mask": patch_default_causal_mask,
    "schedule_tensors": patch_schedule_tensors,
    "optimizer_tensors": patch_optimizer_tensors,
    "grad_l2_norm": patch_grad_l2_norm,
    "tensor_type_checks": patch_tensor_type_checks,
    "tensor_cuda_calls": patch_tensor_cuda_calls,
    "checkpoint_rng": patch_checkpoint_rng,
    "p2p_shape_sync": patch_p2p_shape_sync,
}


def apply_cpu_patches() -> None:
    """Apply every patch in PATCHES once, and only when CUDA is absent (no-op on GPU machines)."""
    if torch.cuda.is_available():
        return
    for name, patch in PATCHES.items():
        if name not in _APPLIED:
            patch()
            _APPLIED.add(name)


def applied() -> frozenset[str]:
    """Names of the patches applied in this process."""
    return frozenset(_APPLIED)
