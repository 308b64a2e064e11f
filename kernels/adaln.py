"""Fused LayerNorm (no affine, fp32 math) + adaLN modulate with per-frame shift and scale.

Wan's blocks compute norm(x) * (1 + scale) + shift with one (shift, scale) per latent frame,
broadcast over that frame's tokens: fused, x is read once and the result written once, in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamer.kernels._triton import require_triton, tl, triton


def layernorm_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                 eps: float = 1e-6) -> torch.Tensor:
    """x [B, S, D] with S = F * tokens_per_frame, shift/scale [B, F, D] -> [B, S, D] in x's dtype."""
    b, s, d = x.shape
    n_frames = shift.shape[1]
    xf = F.layer_norm(x.float().view(b, n_frames, s // n_frames, d), (d,), eps=eps)
    return (xf * (1 + scale[:, :, None].float()) + shift[:, :, None].float()).to(x.dtype).view(b, s, d)


@triton.jit
def _layernorm_modulate_kernel(X, Shift, Scale, Out, S, tokens, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    frame = (row // S) * (S // tokens) + (row % S) // tokens  # index into [B, F] of this token's frame
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    x = tl.load(X + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / D
    xc = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, 0) / D + eps)
    shift = tl.load(Shift + frame * D + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(Scale + frame * D + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * D + offs, (xc * rstd * (1 + scale) + shift).to(Out.dtype.element_ty), mask=mask)


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The Triton kernel: same contract as `layernorm_modulate_reference`."""
    require_triton()
    b, s, d = x.shape
    n_frames = shift.shape[1]
    if s % n_frames:
        raise ValueError(f"{s} tokens do not split into {n_frames} frames")
    x = x.contiguous()
    out = torch.empty_like(x)
    if b * s:
        _layernorm_modulate_kernel[(b * s,)](
            x, shift.contiguous(), scale.contiguous(), out, s, s // n_frames, d, eps,
            BLOCK=triton.next_power_of_2(d), num_warps=4 if d <= 2048 else 8,
        )
    return out
