"""Device defaults, chosen from the machine at hand rather than assumed: the one place for them.

- dtype: bf16 on CUDA. On a CPU, bf16 only where it has native bf16 matrix units (AVX512-BF16 or
  AMX: oneDNN then runs bf16 matmuls ~2-4x faster than fp32); without them torch emulates bf16 and
  the shipped model runs ~3x *slower* than in fp32 (measured: 22 vs 61 frames/s on a 2-core EPYC
  without AVX512-BF16). Where the flags say nothing either way, a short timed probe at the model's
  matmul shape decides, cached per machine so only the first run pays for it (~0.3 s).
- threads: the cores this process may actually use (affinity mask and cgroup quota), not the
  machine's count, unless the user set OMP_NUM_THREADS.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_reason: str = ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def available_cpus() -> int:
    """Cores this process may run on: the affinity mask, lowered by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads() -> int:
    """Set torch's intra-op threads to the usable cores (OMP_NUM_THREADS wins when set); returns it."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = available_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "streamer" / "cpu_dtype.json"


def _probe_bf16_speedup(repeats: int = 5) -> float:
    """fp32 time / bf16 time of a matmul at the shipped model's shape (3 latent frames of 16x16
    tokens x dim 192 -> FFN 768), best of `repeats`."""
    a32, b32 = torch.randn(768, 192), torch.randn(192, 768)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = a32.to(dtype), b32.to(dtype)
        torch.mm(a, b)  # first call: oneDNN picks and builds its kernel
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(10):
                torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        times[dtype] = best
    return times[torch.float32] / times[torch.bfloat16]


def cpu_dtype() -> torch.dtype:
    """bf16 where the CPU runs it natively (or measurably faster), else fp32; `dtype_reason()` says why."""
    global _reason
    flags = cpu_flags()
    native = sorted(f for f in _NATIVE_BF16_FLAGS if f in flags)
    if native:
        _reason = f"CPU has native bf16 ({', '.join(native)}): bf16"
        return torch.bfloat16
    if flags and "avx512f" not in flags:  # no AVX-512 at all: bf16 can only be emulated
        _reason = "CPU has no native bf16 units (no AVX512-BF16/AMX): fp32, ~3x faster than emulated bf16 here"
        return torch.float32
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    speedup = cached.get(key)
    if not isinstance(speedup, (int, float)):
        speedup = _probe_bf16_speedup()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**cached, key: speedup}))
        except OSError:
            pass  # a read-only home: probe again next time
    dtype = torch.bfloat16 if speedup > 1.15 else torch.float32
    _reason = (f"CPU without bf16 flags; measured bf16 {speedup:.2f}x fp32 at the model's matmul shape "
               f"(cached in {path}): {'bf16' if dtype == torch.bfloat16 else 'fp32'}")
    return dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The compute dtype a model runs in by default on `device`: bf16 on CUDA, `cpu_dtype()` on CPU."""
    global _reason
    if torch.device(device).type == "cuda":
        _reason = "CUDA: bf16"
        return torch.bfloat16
    return cpu_dtype()


def dtype_reason() -> str:
    """Why the last `default_dtype` call chose what it chose (for verbose output)."""
    return _reason
