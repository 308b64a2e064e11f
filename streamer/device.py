"""Device defaults, chosen from the machine at hand rather than assumed: the one place for them.

- dtype: bf16 on CUDA. On a CPU, whichever of bf16 and fp32 streams the shipped model's shape faster
  *here*, measured once and cached per machine (~3 s, `_probe_bf16_speedup`). CPU flags alone do not
  decide it: without native bf16 units (AVX512-BF16/AMX) torch emulates bf16 and the shipped model
  runs ~3x slower than in fp32 (22 vs 61 frames/s on a 2-core AMD EPYC), but having them is not
  enough either: on a 2-core Intel Xeon with AMX the default model streamed 44 frames/s in fp32 and
  38 in bf16 (`streamer bench --dtype fp32 bf16`), though a lone bf16 matmul ran 4x faster there
  (at 3.4M parameters the casts and the non-matmul ops outweigh the matmuls). A CPU without AVX-512
  at all can only emulate bf16 and gets fp32 without a probe.
- threads: the cores this process may actually use (affinity mask and cgroup quota), not the
  machine's count, unless the user set OMP_NUM_THREADS.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
log = logging.getLogger(__name__)
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


def _probe_bf16_speedup(timed_chunks: int = 6) -> float:
    """fp32 time / bf16 time per chunk of a stream with a random model of the shipped default's shape
    (the world-128 DiT in the dtype, 4 sampler steps, deep-sink cache, the tiny decoder in fp32,
    128x128): what `streamer generate` runs, so the ratio counts the casts and the non-matmul ops as
    well as the matmuls. One warm-up chunk each, then `timed_chunks` chunks (DiT + decode seconds)
    taken in turn, fp32 then bf16, and the fastest of each compared: other work on the machine only
    ever adds time, and taking turns spreads it over both (a probe under load once read 1.22x for
    bf16 on a Xeon where, idle, it read 0.62-1.02x and fp32 streamed 33 frames/s to bf16's 26)."""
    from streamer.models.tiny_vae import TinyStreamingDecoder, TinyVAE
    from streamer.pipeline import Pipeline
    from streamer.session import Session, StreamConfig

    config = StreamConfig(width=128, height=128, policy="deep-sink", policy_args={"window": 9, "sink": 3},
                          drift_anchor=True)
    streams = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = Pipeline.load(preset="world-128", device="cpu", dtype=dtype)
        pipe.decoder = TinyStreamingDecoder(TinyVAE())  # fp32 in both, as `Pipeline.load_default` keeps it on CPU
        streams[dtype] = Session(pipe, "probe", config).stream(config.chunk_frames * (1 + timed_chunks))
        next(streams[dtype])  # warm-up: oneDNN builds its kernels
    best = {dtype: float("inf") for dtype in streams}
    for _ in range(timed_chunks):
        for dtype, stream in streams.items():
            chunk = next(stream)
            best[dtype] = min(best[dtype], chunk.dit_seconds + chunk.decode_seconds)
    return best[torch.float32] / best[torch.bfloat16]


def cpu_dtype(probe: Callable[[], float] | None = None) -> torch.dtype:
    """bf16 where it streams clearly faster (>= 1.2x) than fp32 on this CPU, else fp32;
    `dtype_reason()` says why. The measured ratio is cached per CPU model, torch version and thread
    count (`$XDG_CACHE_HOME/streamer/cpu_dtype.json`), so only a machine's first run pays for it
    (~4 s; delete the file to measure again).
    probe: the measurement (default `_probe_bf16_speedup`; tests pass their own)."""
    global _reason
    flags = cpu_flags()
    native = sorted(f for f in _NATIVE_BF16_FLAGS if f in flags)
    if flags and "avx512f" not in flags:  # no AVX-512 at all: bf16 can only be emulated
        _reason = "CPU has no native bf16 units (no AVX512-BF16/AMX): fp32, ~3x faster than emulated bf16 here"
        return torch.float32
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | stream v4"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    speedup = cached.get(key)
    where = f"cached in {path}"
    if not isinstance(speedup, (int, float)):
        log.info("measuring bf16 against fp32 on this CPU, once (cached in %s)", path)
        speedup = (probe or _probe_bf16_speedup)()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**cached, key: speedup}))
        except OSError:
            where = "not cached: the cache folder is not writable"  # probe again next time
    dtype = torch.bfloat16 if speedup >= 1.2 else torch.float32
    units = f"native bf16 ({', '.join(native)})" if native else "no bf16 flags"
    _reason = (f"CPU with {units}; measured bf16 {speedup:.2f}x fp32 streaming the default model's shape "
               f"({where}): {'bf16' if dtype == torch.bfloat16 else 'fp32'}")
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
