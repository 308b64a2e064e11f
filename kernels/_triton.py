"""Triton when it is installed; otherwise stand-ins so the kernel modules still import.

Each kernel module keeps its torch reference beside its Triton kernel, and the torch references
are the CPU path: they must import on machines without Triton. Without Triton the decorators below
leave the kernel functions as plain (never launched) Python functions; `require_triton` makes any
launch fail with a clear message. Kernel modules use `from __future__ import annotations`, so
`tl.constexpr` annotations are strings and need no `tl` at definition time (Triton reads them as text).
"""

from __future__ import annotations

import os

# The interpreter must be chosen before any @triton.jit runs (tests/conftest.py sets it).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _wanted() -> bool:
    """Import Triton only where a kernel can run or be compiled: a CUDA device, the interpreter, or an
    ahead-of-time compile (`streamer kernels` sets STREAMER_TRITON=1). On a CPU-only run the kernels
    never launch, and importing Triton would cost ~0.3 s of start-up for nothing (a tenth of the 3-s
    first-frame budget of `streamer generate` on a 2-core CPU)."""
    if INTERPRET or os.environ.get("STREAMER_TRITON") == "1":
        return True
    import torch

    return torch.cuda.is_available()


try:
    if not _wanted():
        raise ImportError("not wanted here")
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
    tl = None

    class _NoTriton:
        """Just enough of the `triton` module for kernel definitions to be skipped over."""

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_, **__):
            return lambda f: f

        @staticmethod
        def Config(*_, **__):  # noqa: N802 (mirrors triton.Config)
            return None

    triton = _NoTriton()


def require_triton() -> None:
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed: use the torch path (streamer.kernels.set_mode('torch'))")


def configs(interpret: list, cuda: list) -> list:
    """Autotune configs: one fixed config under the interpreter (it cannot benchmark), a search on CUDA."""
    return interpret if INTERPRET else cuda
