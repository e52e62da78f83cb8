"""Where and in what precision to run: the device, the autocast dtype, the peak FLOP/s that MFU
is measured against, and the allocator setting that CPU training wants."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import torch

from kazgpt.cli import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, SXM parts.
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}
_measured_peaks: dict[tuple[str, str], float] = {}


def resolve_device(requested: Optional[str]) -> str:
    """The device to run on: the requested one if it exists, else cuda, then mps, then cpu."""
    mps_available = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if not requested:
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu"
    kind = requested.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise UserError(f"unknown device '{requested}': use cpu, cuda, cuda:N or mps")
    if (kind == "cuda" and not torch.cuda.is_available()) or (kind == "mps" and not mps_available):
        raise UserError(f"--device={requested} but this machine has no {'CUDA GPU' if kind == 'cuda' else 'MPS'}: "
                        "use --device=cpu, or leave --device out to pick automatically")
    return requested


def cpu_supports_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX): there bf16 training is
    faster than fp32; where bf16 is only emulated it is slower (BENCHMARKS.md has the figures)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return False
    return cpu_supports_bf16() and any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(requested: Optional[str], device: str, training: bool = False) -> str:
    """The autocast dtype. Defaults: bf16 on CUDA where supported (fp16 otherwise), bf16 for
    training on CPUs with bf16 instructions, float32 elsewhere and for sampling on CPU (one-token
    decode steps measured slower in bf16)."""
    kind = device.split(":")[0]
    if requested is None:
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if kind == "cpu" and training and cpu_has_fast_bf16() else "float32"
    if requested == "bfloat16" and not (torch.cuda.is_bf16_supported() if kind == "cuda" else cpu_supports_bf16()):
        raise UserError(f"this {kind.upper()} has no bfloat16 support: use --dtype=float32")
    if requested == "float16" and kind != "cuda":
        raise UserError(f"float16 autocast is only used on CUDA: use --dtype=float32 (or bfloat16) on {kind}")
    return requested


def autocast_context(device: str, dtype: str):
    """Mixed precision for the forward pass; a no-op in float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[dtype])


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


def measure_matmul_flops(device: str, dtype: str, n: int = 2048, seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of a device we have no table for."""
    dt = DTYPES[dtype]
    a = torch.full((n, n), 0.5, device=device, dtype=dt)  # not randn: the global RNG must stay untouched
    b = torch.full((n, n), 0.25, device=device, dtype=dt)
    for _ in range(2):
        a @ b
    synchronize(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - t0)


def device_peak_flops(device: str, dtype: str) -> float:
    """The peak FLOP/s that MFU is measured against: a data-sheet figure for known GPUs in
    bf16/fp16, otherwise a measured large matmul (cached per process)."""
    if device.startswith("cuda") and dtype != "float32":
        name = torch.cuda.get_device_name(torch.device(device))
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    key = (device, dtype)
    if key not in _measured_peaks:  # a CPU reaches its peak on smaller matrices, and a 2048-square one takes seconds
        size = 1024 if device == "cpu" else 2048
        _measured_peaks[key] = measure_matmul_flops(device, dtype, n=size, seconds=0.25 if device == "cpu" else 0.5)
    return _measured_peaks[key]


def keep_freed_memory_for_reuse() -> bool:
    """Stop glibc from handing freed heap memory back to the OS between training steps.

    A CPU training step frees and reallocates the same activations every iteration. glibc trims
    the top of its heap back to the OS once more than twice the largest mmap'd block freed so far
    sits free there (128 KB at start), so unless something large happened to be freed earlier,
    every step page-faults its memory in again. Keeping up to 1 GB of freed heap, and mmap'ing
    only blocks of 32 MB or more, makes that independent of history; the peak RSS stays the same,
    since the next step reuses what this one freed. Returns whether it applied (glibc only)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
