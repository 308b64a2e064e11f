"""The latent <-> video frame rule of causal video VAEs (Wan 2.1, TAEHV, the project's tiny VAE).

The encoder compresses time by a stride s (4 for Wan): the first video frame becomes latent
frame 0 on its own, and every later group of s video frames one more latent frame, so a video of
1 + s*k frames has 1 + k latent frames (81 frames = 21 latents). Decoding mirrors it. Decoders
carry their rule as `decoder.frames`; count with it, never by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FrameRule:
    temporal_stride: int = 4

    def video_frames(self, latent_frames: int, first: bool = True) -> int:
        """Video frames decoded from `latent_frames` latent frames; `first`: they start the stream."""
        if latent_frames <= 0:
            return 0
        return self.temporal_stride * latent_frames - (self.temporal_stride - 1 if first else 0)

    def latent_frames(self, video_frames: int) -> int:
        """Fewest latent frames (from the stream's start) whose decode covers `video_frames` frames."""
        return 0 if video_frames <= 0 else 1 + math.ceil((video_frames - 1) / self.temporal_stride)

    def first_video_frame(self, latent_frame: int) -> int:
        """Index of the first video frame latent frame `latent_frame` decodes to."""
        return 0 if latent_frame <= 0 else self.temporal_stride * latent_frame - self.temporal_stride + 1

    def video_frames_of(self, latent_frame: int) -> list[int]:
        """The video frames latent frame `latent_frame` holds: [0] for the first, then s each."""
        start = self.first_video_frame(latent_frame)
        return [0] if latent_frame == 0 else list(range(start, start + self.temporal_stride))

    def encodable(self, video_frames: int) -> int:
        """Largest 1 + s*k frame count not above `video_frames` (what an encoder can take whole)."""
        return 0 if video_frames <= 0 else (video_frames - 1) // self.temporal_stride * self.temporal_stride + 1


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """video [B, 3, N, H, W] in [-1, 1] -> uint8 [B, N, H, W, 3] (converted on the video's device,
    so only bytes cross to the host)."""
    pixels = ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()
