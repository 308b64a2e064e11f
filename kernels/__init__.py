"""Triton kernels for the streaming hot path, each beside its plain-torch reference, and the one
place the compute backend is chosen.

The backend is one value, the *mode*:
- "auto" (the default): the Triton kernels for CUDA tensors when Triton is installed, torch elsewhere;
- "torch": everything in PyTorch (SDPA and the kernels' torch references: the baseline of `streamer bench`);
- "triton": the kernels for every tensor, also on CPU under TRITON_INTERPRET=1 (the tests).
`select()` sets it from the CLI's `--attention`; `attention()` below is the model's one attention swap
point, and the `run_*` dispatchers pick kernel or reference by the same mode. Importing this package
never imports Triton: kernel modules load on first use, so a CPU-only install works unchanged. (The
dispatchers carry a `run_` prefix because a submodule, once imported, becomes an attribute of this
package under its own name.)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal


def _yield_top_level_name() -> None:
    """Give the top-level name `kernels` back to the distribution that owns it.

    This folder is installed as `streamer.kernels` (the layout of DESIGN.md). It is also importable as a
    plain `kernels` whenever the repository root is on sys.path (`python -m pytest` or `python -m
    streamer` run from a checkout, a notebook opened there). That name belongs to Hugging Face's
    `kernels` distribution, which transformers >= 5.25 requires and imports at start-up (`from kernels
    import CUDAProperties`, reached from diffusers through peft); shadowing it breaks every import of
    diffusers' Wan VAE and transformer. So when this file runs as `kernels` and that distribution is
    installed, the distribution's package is loaded under the name instead: the import statement that
    led here returns it (a module may replace its own sys.modules entry while it runs). Without the
    distribution nothing is shadowed and this module stays as it is.
    """
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return
    init = Path(str(dist.locate_file("kernels/__init__.py")))
    if not init.is_file() or init.resolve() == Path(__file__).resolve():
        return
    spec = importlib.util.spec_from_file_location("kernels", init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["kernels"]
        raise


if __name__ == "kernels":
    _yield_top_level_name()

import torch  # noqa: E402

import torch.nn.functional as F  # noqa: E402

Mode = Literal["auto", "torch", "triton"]
_mode: Mode = "auto"


def triton_available() -> bool:
    """Triton importable, and either a CUDA device or the interpreter (TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def set_mode(mode: Mode) -> None:
    global _mode
    if mode not in ("auto", "torch", "triton"):
        raise ValueError(f"kernel mode must be auto, torch or triton; got {mode!r}")
    if mode == "triton" and not triton_available():
        # a ValueError: asking for the kernels where they cannot run is a bad setting (the CLI's one line, exit 2)
        raise ValueError("the Triton kernels need Triton and a CUDA device (or TRITON_INTERPRET=1); "
                         "auto or torch runs everywhere")
    _mode = mode


def get_mode() -> Mode:
    return _mode


def select(backend: str = "auto") -> str:
    """Set the mode from `--attention` and return what runs, resolved: "auto" is "triton" when Triton
    and a CUDA device are there (the kernels then run for CUDA tensors), else "torch"; "triton" forces
    the kernels (ValueError without Triton and CUDA or the interpreter); "torch" is all-PyTorch."""
    set_mode(backend)  # type: ignore[arg-type]
    if backend == "auto":
        return "triton" if torch.cuda.is_available() and triton_available() else "torch"
    return backend


def use_triton(x: torch.Tensor) -> bool:
    """Whether the kernels run for tensors like x under the current mode."""
    if _mode == "auto":
        return x.is_cuda and triton_available()
    return _mode == "triton"


def use_attention_kernel(q: torch.Tensor) -> bool:
    """Whether attention over q runs in the cache-attention kernel: bf16/fp16 on CUDA. fp32 has no
    tensor-core path there (exact fp32 dots run on FMA units and spill: `streamer kernels`), so on
    CUDA it stays with torch; forced mode ("triton") runs every dtype (the tests)."""
    if _mode == "triton":
        return True
    return use_triton(q) and q.dtype in (torch.bfloat16, torch.float16)


def run_cache_attention(q: torch.Tensor, history=None, segments: Sequence = (), scale: float | None = None):
    """(out, lse) of q over [history slots | segments]; see kernels/cache_attention.py."""
    from streamer.kernels import cache_attention as m

    fn = m.cache_attention if use_attention_kernel(q) else m.cache_attention_reference
    return fn(q, history, segments, scale)


def run_attention_mass(q: torch.Tensor, lse: torch.Tensor | None, history=None, segments: Sequence = (),
                       scale: float | None = None) -> torch.Tensor:
    """Mean attention probability per key [B, n_keys]; see kernels/attention_mass.py. The kernel needs the
    attention's log-sum-exp; without one (torch attention) the reference recomputes the softmax."""
    from streamer.kernels import attention_mass as m

    if lse is not None and use_triton(q):
        return m.attention_mass(q, lse, history, segments, scale)
    return m.attention_mass_reference(q, history, segments, scale)


def run_participation_scores(queries: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor | None = None,
                             theta: float = 10000.0) -> torch.Tensor:
    """Deep Forcing's sum over queries and heads of q . k per key [n_keys]."""
    from streamer.kernels import attention_mass as m

    fn = m.participation_scores if use_triton(keys) else m.participation_scores_reference
    return fn(queries, keys, positions, theta)


def run_qk_norm_rope(q, k, weight_q, weight_k, cos, sin, heads: int, eps: float = 1e-6):
    """RMSNorm across heads + RoPE of q and k [B, S, H * D] -> two [B, S, H, D]."""
    from streamer.kernels import qk_norm_rope as m

    fn = m.qk_norm_rope if use_triton(q) else m.qk_norm_rope_reference
    return fn(q, k, weight_q, weight_k, cos, sin, heads, eps)


def run_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [B, S, H, D] by per-token angles (cos/sin [S, D / 2]), fp32 math, x's dtype."""
    from streamer.kernels import rope as m

    fn = m.rope if use_triton(x) else m.rope_reference
    return fn(x, cos, sin)


def run_layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                           eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift with per-frame shift/scale [B, F, D]."""
    from streamer.kernels import adaln as m

    fn = m.layernorm_modulate if use_triton(x) else m.layernorm_modulate_reference
    return fn(x, shift, scale, eps)


def run_gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate with a per-frame gate [B, F, D], fp32 math, x's dtype."""
    from streamer.kernels import gated_residual as m

    fn = m.gated_residual if use_triton(x) else m.gated_residual_reference
    return fn(x, y, gate)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch SDPA over [B, S, H, D] tensors (flash / memory-efficient / math, chosen by torch)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's one attention swap point: softmax attention of q [B, Sq, H, D] over k/v [B, Sk, H, D]
    with an optional boolean mask [Sq, Sk] (True = may attend) -> [B, Sq, H, D]. The cache-attention
    kernel where the mode runs kernels for q (no mask: masks only occur in full-clip training
    forwards), SDPA otherwise. A chunk's attention over its KV cache goes through `CacheView`, which
    reads the cache in place on the kernel path."""
    if mask is None and use_attention_kernel(q):
        return run_cache_attention(q, None, [(k, v)])[0]
    return sdpa(q, k, v, mask)
