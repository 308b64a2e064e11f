"""Fused qk RMSNorm across all heads + 3D RoPE: one read and one write of q and of k.

Wan normalises q and k over the whole model dim (all heads together, weight of size H * D), then
rotates interleaved channel pairs of each head by per-token angles (cos/sin [S, D / 2] as made by
`models.rope.rope_cos_sin`). Unfused that is four passes over each tensor; fused it is one.
cos/sin None means no rotation (the norm alone), for self-attention callbacks that rotate q/k themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamer.kernels._triton import require_triton, tl, triton
from streamer.kernels.rope import rotate_pairs
from streamer.models.rope import apply_rope


def norm_rope_reference(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                        heads: int, eps: float = 1e-6) -> torch.Tensor:
    """x [B, S, H * D] -> RMSNorm (as the model's nn.RMSNorm) -> [B, S, H, D] -> RoPE (fp32, x's dtype).

    This is exactly what the unfused model computed (nn.RMSNorm is F.rms_norm, then `apply_rope`), so
    the CPU path gives the same numbers, bit for bit, as before the fusion."""
    normed = F.rms_norm(x, (x.shape[-1],), weight, eps).unflatten(-1, (heads, -1))
    return normed if cos is None else apply_rope(normed, cos, sin)


def qk_norm_rope_reference(q, k, weight_q, weight_k, cos, sin, heads: int, eps: float = 1e-6):
    return (norm_rope_reference(q, weight_q, cos, sin, heads, eps),
            norm_rope_reference(k, weight_k, cos, sin, heads, eps))


@triton.jit
def _norm_rope_row(X, W, Out, row, s_row, Cos, Sin, tok, eps, N,
                   HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    partner = offs ^ 1  # the other channel of each interleaved pair (N is even: stays in range)
    x = tl.load(X + row * s_row + offs, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(X + row * s_row + partner, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    wp = tl.load(W + partner, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / N + eps)
    out = rotate_pairs(x * w, xp * wp, Cos, Sin, tok, offs, mask, HEAD_DIM) * rstd
    tl.store(Out + row * N + offs, out.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(Q, K, WQ, WK, OQ, OK, Cos, Sin, s_qrow, s_krow, S, N, eps,
                         HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (B * S, 2): axis 1 picks q or k, so both tensors go in one launch."""
    row = tl.program_id(0).to(tl.int64)
    tok = row % S
    if tl.program_id(1) == 0:
        _norm_rope_row(Q, WQ, OQ, row, s_qrow, Cos, Sin, tok, eps, N, HEAD_DIM, BLOCK)
    else:
        _norm_rope_row(K, WK, OK, row, s_krow, Cos, Sin, tok, eps, N, HEAD_DIM, BLOCK)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor,
                 cos: torch.Tensor | None, sin: torch.Tensor | None, heads: int, eps: float = 1e-6):
    """The Triton kernel: same contract as `qk_norm_rope_reference` (q, k [B, S, H * D] -> [B, S, H, D])."""
    require_triton()
    b, s, n = q.shape
    if k.shape != q.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    head_dim = n // heads
    if cos is None:  # the norm alone: an identity rotation (cos 1, sin 0 leave every pair exactly as it is)
        cos = torch.ones(s, head_dim // 2, device=q.device)
        sin = torch.zeros(s, head_dim // 2, device=q.device)
    if cos.shape != (s, head_dim // 2) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin {tuple(cos.shape)} / {tuple(sin.shape)} must be [{s}, {head_dim // 2}]")
    q2, k2 = q.reshape(b * s, n), k.reshape(b * s, n)
    q2, k2 = (x if x.stride(-1) == 1 else x.contiguous() for x in (q2, k2))
    oq = torch.empty(b, s, heads, head_dim, dtype=q.dtype, device=q.device)
    ok = torch.empty(b, s, heads, head_dim, dtype=k.dtype, device=k.device)
    if b * s:
        _qk_norm_rope_kernel[(b * s, 2)](
            q2, k2, weight_q, weight_k, oq, ok, cos.float().contiguous(), sin.float().contiguous(),
            q2.stride(0), k2.stride(0), s, n, eps, HEAD_DIM=head_dim, BLOCK=triton.next_power_of_2(n),
            num_warps=4 if n <= 2048 else 8,
        )
    return oq, ok
