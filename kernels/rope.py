"""RoPE alone, in one pass: the temporal rotation a cache view applies to each chunk's q and k.

`models.rope.apply_rope` is the definition (and the reference): fp32 rotation of interleaved pairs
by per-token angles, result in x's dtype. In torch that is an upcast, four products, two sums, a
stack and a downcast, each a pass over [tokens, heads, head_dim] with fp32 temporaries; the view
does it to q and to the chunk's k at every layer of every denoising pass. Fused it is one read and
one write.
"""

from __future__ import annotations

import torch

from streamer.kernels._triton import require_triton, tl, triton
from streamer.models.rope import apply_rope

rope_reference = apply_rope


@triton.jit
def rotate_pairs(x, xp, Cos, Sin, tok, offs, mask, HEAD_DIM: tl.constexpr):
    """One token's channels `offs` (all heads, flat) rotated by its angles: x holds the channels,
    xp each channel's pair partner (offs ^ 1), fp32. Even: x c - x' s; odd: x c + x' s."""
    pair = (offs % HEAD_DIM) // 2
    c = tl.load(Cos + tok * (HEAD_DIM // 2) + pair, mask=mask, other=1.0)
    s = tl.load(Sin + tok * (HEAD_DIM // 2) + pair, mask=mask, other=0.0)
    return x * c + xp * tl.where(offs % 2 == 0, -s, s)


@triton.jit
def _rope_kernel(X, Cos, Sin, Out, S, N, s_row, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """One token (all heads) per program."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + row * s_row + offs, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(X + row * s_row + (offs ^ 1), mask=mask, other=0.0).to(tl.float32)
    out = rotate_pairs(x, xp, Cos, Sin, row % S, offs, mask, HEAD_DIM)
    tl.store(Out + row * N + offs, out.to(Out.dtype.element_ty), mask=mask)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The Triton kernel: same contract as `apply_rope` (x [B, S, H, D], cos/sin [S, D / 2])."""
    require_triton()
    b, s, h, d = x.shape
    if cos.shape != (s, d // 2) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin {tuple(cos.shape)} / {tuple(sin.shape)} must be [{s}, {d // 2}]")
    rows = x.reshape(b * s, h * d)
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    out = torch.empty(b, s, h, d, dtype=x.dtype, device=x.device)
    if b * s:
        n = h * d
        _rope_kernel[(b * s,)](rows, cos.float().contiguous(), sin.float().contiguous(), out, s, n, rows.stride(0),
                               HEAD_DIM=d, BLOCK=triton.next_power_of_2(n), num_warps=4 if n <= 2048 else 8)
    return out
