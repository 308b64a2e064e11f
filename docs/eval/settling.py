"""Where a tracked stream's background change comes from: the first chunk against the settled stream.

`streamer eval`'s background change is read against the stream's frame 0. This splits it, on the
eval's first held-out prompt + tracks scenes of one sprite: the settled background is the median
over the frames from 1 s on (per pixel, far from every sprite); each stretch of frames prints its
mean absolute difference from that median (0-255), its high-frequency energy (the mean absolute
difference from a Gaussian blur of sigma 1.5 px: grain) and its mean colour. The autoencoder alone
on the true clip is the reference. A first chunk drawn off the settled background shows as a large
difference in frames 0-8 that the later stretches do not have.

    python docs/eval/settling.py WEIGHTS_DIR [SECONDS] [HIDDEN_CHUNKS]   # default 20 s, the model's own

(WEIGHTS_DIR: a `streamer train` run folder, or streamer/weights; 1 thread, bf16.)"""

import sys

import cv2
import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, World, reference_frames, stream_clip, stream_frames

STRETCHES = ((0, 1), (1, 9), (9, 21), (21, 45), (45, None))  # video frames [start, end): chunk 1 is 0-8


def far_masks(clip, frames: np.ndarray) -> np.ndarray:
    """bool [T, H, W]: pixels farther than 2.2 radii from every sprite (as the eval's background)."""
    t_len, h, w = frames.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w]
    far = np.ones((t_len, h, w), bool)
    for t in range(t_len):
        for n, sp in enumerate(clip.scene.sprites):
            x, y = clip.trajectory.tracks[t, n]
            far[t] &= (xx - x) ** 2 + (yy - y) ** 2 > (sp.radius * 2.2) ** 2
    return far


def profile(frames: np.ndarray, far: np.ndarray, fps: float) -> list[str]:
    f = frames.astype(np.float32)
    settled = np.where(far[..., None], f, np.nan)[int(fps):]
    with np.errstate(all="ignore"):
        median = np.nanmedian(settled, axis=0)  # [H, W, 3]; NaN where a sprite always was
    rows = []
    for a, b in STRETCHES:
        ts = range(a, min(b or len(f), len(f)))
        if not len(ts):
            continue
        diff = np.mean([np.nanmean(np.abs(f[t] - median).mean(-1)[far[t]]) for t in ts])
        grain = np.mean([np.abs(f[t] - cv2.GaussianBlur(f[t], (0, 0), 1.5)).mean(-1)[far[t]].mean() for t in ts])
        colour = np.mean([f[t][far[t]].mean(0) for t in ts], axis=0)
        rows.append(f"frames {a}-{(b or len(f)) - 1}: from the settled {diff:.2f}, grain {grain:.2f}, "
                    f"colour ({colour[0]:.1f}, {colour[1]:.1f}, {colour[2]:.1f})")
    return rows


def main(weights: str, seconds: float = 20.0, hidden: int | None = None) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(weights, dtype=torch.bfloat16)
    defaults = pipe.stream_defaults or {}
    world = World()
    for seed in HELD_OUT_SEEDS[:4]:
        clip = world.clip(seed, stream_frames(seconds, pipe.fps))
        if len(clip.scene.sprites) != 1:
            continue
        print(clip.prompt)
        model, _ = stream_clip(pipe, clip, defaults.get("policy", "window"), defaults.get("policy_args", {}),
                               None, 0, hidden_chunks=hidden)
        for name, frames in (("model", model), ("autoencoder", reference_frames(pipe, clip))):
            far = far_masks(clip, frames)
            far &= far[0]  # as the eval: pixels far from every sprite now and in frame 0
            for row in profile(frames, far, pipe.fps):
                print(f"  {name:11s} {row}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 20.0,
         int(sys.argv[3]) if len(sys.argv) > 3 else None)
