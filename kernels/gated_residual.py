"""Fused gated residual add: x + gate * y with one gate per latent frame, fp32 math, x's dtype out.

In Wan's blocks this follows every self-attention and FFN; fused, it is one pass instead of an
upcast, a multiply, an add and a downcast.
"""

from __future__ import annotations

import torch

from streamer.kernels._triton import require_triton, tl, triton


def gated_residual_reference(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x, y [B, S, D] with S = F * tokens_per_frame, gate [B, F, D] -> [B, S, D] in x's dtype."""
    b, s, d = x.shape
    n_frames = gate.shape[1]
    out = x.float().view(b, n_frames, -1, d) + y.float().view(b, n_frames, -1, d) * gate[:, :, None].float()
    return out.to(x.dtype).view(b, s, d)


@triton.jit
def _gated_residual_kernel(X, Y, Gate, Out, S, tokens, D, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    frame = (row // S) * (S // tokens) + (row % S) // tokens
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    x = tl.load(X + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(Gate + frame * D + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * D + offs, (x + y * g).to(Out.dtype.element_ty), mask=mask)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The Triton kernel: same contract as `gated_residual_reference`."""
    require_triton()
    b, s, d = x.shape
    n_frames = gate.shape[1]
    if s % n_frames or y.shape != x.shape:
        raise ValueError(f"x {tuple(x.shape)}, y {tuple(y.shape)} and gate {tuple(gate.shape)} do not match")
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    if b * s:
        _gated_residual_kernel[(b * s,)](x, y, gate.contiguous(), out, s, s // n_frames, d,
                                         BLOCK=triton.next_power_of_2(d), num_warps=4 if d <= 2048 else 8)
    return out
