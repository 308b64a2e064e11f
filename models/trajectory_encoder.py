"""Trajectories -> MotionStream-style track channels at latent resolution (DESIGN section 6).

Each track gets a sinusoidal ID embedding (d = 64), placed where the track is on the latent grid
(stride 8) while it is visible. We splat bilinearly onto the 4 nearest latent cells rather than
rounding, so sub-cell positions (8 px cells at 128 px) survive. Time is compressed 4x the way the
latent layout is: latent frame 0 holds video frame 0, latent frame j > 0 holds video frames
4j-3 .. 4j, and the channels are the mean over those frames. Track n is the n-th sprite named in
the prompt, so its ID embedding is a function of n (the binding a user relies on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from streamer.models.frames import FrameRule


class Tracks(Protocol):
    """What the encoder reads of a trajectory (the engine's `streamer.trajectory.Trajectory` is one):
    `num_tracks`, the frame size in pixels, and per video frame the points [N, 2] (pixels) and
    their visibility [N] (bool)."""

    num_tracks: int
    width: int
    height: int

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


def track_id_embedding(n: int, dim: int = 64) -> np.ndarray:
    """[n, dim] sinusoidal codes of track indices 0..n-1 (spread apart so neighbours differ)."""
    idx = np.arange(n, dtype=np.float64)[:, None] * 7.0 + 3.0
    freqs = np.exp(-math.log(100.0) * np.arange(dim // 2) / (dim // 2))
    ang = idx * freqs[None]
    return np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(np.float32)


class TrajectoryEncoder:
    """outside=False: MotionStream's encoding (a track is placed only where it is visible).
    outside=True (world models whose config sets `track_outside`): a track point that is not
    visible and lies outside the frame is placed too, at the centre of the nearest edge cell, with
    its ID embedding negated. Out of view a track is otherwise zeros, as "no track" (a prompt alone) is,
    and the world model spawns a sprite there (docs/eval/exits.md). Points that are not visible
    inside the frame (a track not yet started, or occluded) stay zeros either way."""

    def __init__(self, dim: int = 64, temporal: int = 4, outside: bool = False):
        self.dim, self.temporal, self.outside = dim, temporal, outside

    def __call__(self, traj: Tracks | None, latent_frames: list[int], latent_hw: tuple[int, int]) -> torch.Tensor:
        """-> [1, dim, len(latent_frames), h, w] float32 (zeros where no track is placed)."""
        h, w = latent_hw
        out = np.zeros((len(latent_frames), h, w, self.dim), np.float32)
        if traj is None or traj.num_tracks == 0:
            return torch.from_numpy(out).permute(3, 0, 1, 2)[None]
        emb = track_id_embedding(traj.num_tracks, self.dim)
        sx, sy = w / traj.width, h / traj.height  # pixels -> latent cells
        for j, lf in enumerate(latent_frames):
            frames = FrameRule(self.temporal).video_frames_of(lf)
            for f in frames:
                pts, vis = traj.frame(f)
                sign = vis.astype(np.float32)
                if self.outside:
                    x, y = pts[:, 0], pts[:, 1]
                    out_of_frame = ~vis & np.isfinite(pts).all(1) & ((x < 0) | (x >= traj.width) | (y < 0) | (y >= traj.height))
                    sign[out_of_frame] = -1.0
                for n in np.nonzero(sign)[0]:
                    u, v = pts[n, 0] * sx - 0.5, pts[n, 1] * sy - 0.5  # cell centres at integer coordinates
                    if sign[n] < 0:  # out of the frame: the centre of the nearest edge cell, whole
                        u, v = min(max(u, 0.0), w - 1.0), min(max(v, 0.0), h - 1.0)
                    u0, v0 = math.floor(u), math.floor(v)
                    for dv in (0, 1):
                        for du in (0, 1):
                            x, y = u0 + du, v0 + dv
                            if 0 <= x < w and 0 <= y < h:
                                wt = (1 - abs(u - x)) * (1 - abs(v - y))
                                out[j, y, x] += wt * sign[n] * emb[n]
            out[j] /= len(frames)
        return torch.from_numpy(out).permute(3, 0, 1, 2)[None]


def make_track_condition(traj: Tracks | None, latent_hw: tuple[int, int], dim: int = 64,
                         device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         outside: bool = False) -> Callable[[list[int]], torch.Tensor | None]:
    """A function for `Session.track_condition`: latent frame indices -> track channels (None: no
    drag). outside: `TrajectoryEncoder`'s."""
    enc = TrajectoryEncoder(dim, outside=outside)

    def condition(frames: list[int]) -> torch.Tensor | None:
        if traj is None:
            return None
        return enc(traj, frames, latent_hw).to(device=device, dtype=dtype)

    return condition
