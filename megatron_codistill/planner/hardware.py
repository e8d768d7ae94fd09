"""Accelerators the planner knows: memory, peak dense matmul throughput and HBM bandwidth.

Figures are the vendors' datasheet values for the SXM parts (dense, i.e. without 2:4 sparsity);
memory is what `nvidia-smi` reports as total (the planner subtracts its own reserve for the CUDA
context, NCCL buffers and fragmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator type."""

    name: str
    """Display name."""
    memory_gib: float
    """Total device memory, GiB (nvidia-smi's total)."""
    bf16_tflops: float
    """Peak dense BF16 tensor-core throughput, TFLOP/s."""
    fp8_tflops: float
    """Peak dense FP8 tensor-core throughput, TFLOP/s."""
    hbm_tbs: float
    """Peak HBM bandwidth, TB/s (10^12 bytes/s)."""
    nvlink_gbs: float
    """NVLink bandwidth per direction, GB/s (tensor parallel and intra-node data parallel traffic)."""

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s for matmuls in `precision` ("bf16" or "fp8")."""
        table = {"bf16": self.bf16_tflops, "fp8": self.fp8_tflops}
        if precision not in table:
            raise ValueError(f"precision {precision!r} is not known; valid: {sorted(table)}")
        return table[precision] * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbs * 1e12


GPUS: dict[str, GPUSpec] = {
    # H100 SXM5 80 GB: 81559 MiB; 989.4 / 1978.9 TFLOP/s dense bf16 / fp8; HBM3 3.35 TB/s;
    # NVLink 4: 900 GB/s both directions.
    "h100": GPUSpec("H100 80GB", 81559 / 1024, 989.4, 1978.9, 3.35, 450.0),
    # H200 SXM 141 GB: 143771 MiB; same tensor cores and NVLink as the H100; HBM3e 4.8 TB/s.
    "h200": GPUSpec("H200 141GB", 143771 / 1024, 989.4, 1978.9, 4.8, 450.0),
}
_ALIASES = {"h100-80gb": "h100", "h100_80gb": "h100", "h200-141gb": "h200", "h200_141gb": "h200"}


def get_gpu(name: str) -> GPUSpec:
    """The GPUSpec called `name` (case-insensitive; e.g. "H100", "h200-141gb")."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in GPUS:
        raise ValueError(f"GPU type {name!r} is not known; valid: {sorted(GPUS)} (or {sorted(_ALIASES)})")
    return GPUS[key]
