"""The one place self- and cross-attention are computed: swap the backend here.

Every attention call of the model goes through `attention()`. Backends are registered by name;
"torch" is PyTorch SDPA (flash / memory-efficient / math, chosen by torch), and the Triton kernels
register themselves as "triton" when they are importable on CUDA. Select with `set_backend` or
the `--attention` flag of the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# q [B, Sq, H, D], k/v [B, Sk, H, D], optional boolean mask [Sq, Sk] (True = may attend).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}
_active = "torch"


def register_backend(name: str, fn: AttentionFn) -> None:
    _BACKENDS[name] = fn


def set_backend(name: str) -> None:
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(sorted(_BACKENDS))}")
    _active = name


def get_backend() -> str:
    return _active


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def _torch_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


register_backend("torch", _torch_sdpa)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over [B, S, H, D] tensors; returns [B, Sq, H, D]."""
    return _BACKENDS[_active](q, k, v, mask)
