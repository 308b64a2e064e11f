"""3D rotary position embedding of Wan, computed from positions (no fixed-length table).

Wan splits each head's channels into a temporal, a height and a width band (44/42/42 of 128 at
the 1.3B size) and rotates interleaved channel pairs (x[2i], x[2i+1]). Reference code keeps a
1024-row table, which caps a stream at 1024 latent frames; here angles are computed from the
positions themselves in float64, so any position, fractional or huge, is exact to fp32 precision.
"""

from __future__ import annotations

import torch


def rope_band_dims(head_dim: int) -> tuple[int, int, int]:
    """(temporal, height, width) channel counts, exactly as Wan and diffusers split a head."""
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


def _inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def temporal_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles of the temporal band for each position: [len(positions), t_dim // 2], float64."""
    t_dim, _, _ = rope_band_dims(head_dim)
    return torch.outer(positions.to(torch.float64), _inverse_frequencies(t_dim, theta))


def temporal_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, device: torch.device | None = None,
    full: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the temporal band at each (float) position: [n, t_dim // 2] float32, from float64
    angles. With `full`, padded to [n, head_dim // 2] with the identity (cos 1, sin 0) on the spatial
    pairs, the form `apply_rope` takes. The one temporal cos/sin helper of the cache, its kernels and
    their references."""
    a = temporal_angles(positions, head_dim, theta)
    cos, sin = a.cos().float(), a.sin().float()
    if full:
        pad = head_dim // 2 - cos.shape[1]
        cos = torch.cat([cos, cos.new_ones(cos.shape[0], pad)], 1)
        sin = torch.cat([sin, sin.new_zeros(sin.shape[0], pad)], 1)
    return cos.to(device), sin.to(device)


def spatial_angles(grid_h: int, grid_w: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles of the height and width bands for every token of a frame: [h * w, (h_dim + w_dim) // 2]."""
    _, h_dim, w_dim = rope_band_dims(head_dim)
    ah = torch.outer(torch.arange(grid_h, dtype=torch.float64), _inverse_frequencies(h_dim, theta))
    aw = torch.outer(torch.arange(grid_w, dtype=torch.float64), _inverse_frequencies(w_dim, theta))
    ah = ah[:, None, :].expand(grid_h, grid_w, -1)
    aw = aw[None, :, :].expand(grid_h, grid_w, -1)
    return torch.cat([ah, aw], dim=-1).reshape(grid_h * grid_w, -1)


def rope_cos_sin(
    frame_positions: torch.Tensor, grid_h: int, grid_w: int, head_dim: int, theta: float = 10000.0,
    device: torch.device | None = None, temporal: bool = True, spatial: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for tokens laid out (frame, h, w): each [F * h * w, head_dim // 2], float32.

    `frame_positions` holds one temporal position per frame; it may be any float.
    The three bands rotate disjoint channels, so a full rotation is exactly a spatial-only rotation
    followed by a temporal-only one: `temporal=False` / `spatial=False` give those halves. The KV
    cache stores keys spatially rotated and applies the temporal part at attention time.
    """
    at = temporal_angles(frame_positions, head_dim, theta)  # [F, t/2]
    asp = spatial_angles(grid_h, grid_w, head_dim, theta)  # [hw, (h+w)/2]
    at = at if temporal else torch.zeros_like(at)
    asp = asp if spatial else torch.zeros_like(asp)
    n_f, n_s = at.shape[0], asp.shape[0]
    angles = torch.cat([at[:, None, :].expand(n_f, n_s, -1), asp[None].expand(n_f, n_s, -1)], dim=-1)
    angles = angles.reshape(n_f * n_s, angles.shape[-1])
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, S, H, D] by per-token angles (cos/sin [S, D/2]).

    Computed in fp32 (bf16 rotation visibly drifts at large angles), returned in x's dtype.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x1, x2 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return out.flatten(-2).to(x.dtype)
