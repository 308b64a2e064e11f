"""Where a prompt alone's sprite is lost: the 60-s eval's four text-only streams, each frame's
"found" (as `streamer eval`: a sprite-like blob of the named colour) binned by how far from the
frame's nearest edge the sprite was, both the true sprite and the model's own sprite when last found.
The world bounces a prompt alone's sprite off the walls (spawn layout), which a DiT that knows only
relative positions (RoPE) cannot see coming.

    python docs/eval/text_walls.py WEIGHTS_DIR [SECONDS]   # default 60; 1 thread, bf16 (~4 min)"""

import sys

import numpy as np
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import MIN_PIXELS, World, is_sprite_blob, largest_blob, stream_clip, text_only_clips

BINS = (0, 14, 22, 32, 70)  # px from the nearest edge of the 128-px frame (sprite radius 9 at spawn)


def edge_distance(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """float [...] px from the nearest frame edge of points float [..., 2] (x, y)."""
    x, y = xy[..., 0], xy[..., 1]
    return np.minimum.reduce([x, width - 1 - x, y, height - 1 - y])


def binned(found: np.ndarray, dist: np.ndarray) -> str:
    out = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        m = (dist >= lo) & (dist < hi)
        out.append(f"{lo}-{hi} px {found[m].mean():.2f} ({m.mean():.0%} of frames)" if m.any() else f"{lo}-{hi} px -")
    return ", ".join(out)


def main(weights: str, seconds: int = 60) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(weights, device=torch.device("cpu"), dtype=torch.bfloat16)
    d = pipe.stream_defaults or {}
    every = []
    for clip in text_only_clips(World(), 4, 16 * seconds + 1):
        frames, _ = stream_clip(pipe, clip, d.get("policy", "window"), d.get("policy_args", {}), 4, 0, tracks=False)
        sprite = clip.scene.sprites[0]
        h, w = frames.shape[1:3]
        yy, xx = np.mgrid[:h, :w]
        true = edge_distance(clip.trajectory.tracks[: len(frames), 0], w, h)
        found = np.zeros(len(frames))
        last = np.full(len(frames), np.nan)  # edge distance of the model's sprite when last found
        seen = np.nan
        for t, frame in enumerate(frames):
            last[t] = seen
            blob = largest_blob(frame, sprite.rgb)
            found[t] = is_sprite_blob(blob, sprite)[0]
            if found[t] and blob.sum() >= MIN_PIXELS:
                seen = edge_distance(np.array([xx[blob].mean(), yy[blob].mean()]), w, h)
        every.append((found, last))
        print(f"{clip.prompt}: found {found.mean():.2f}", flush=True)
        print(f"  by the true sprite's distance from the edge: {binned(found, true)}")
        print(f"  by the model's sprite's, when last found:     {binned(found[1:], last[1:])}", flush=True)
    found, last = (np.concatenate(a) for a in zip(*every))
    keep = ~np.isnan(last)
    print(f"all four, by the model's sprite's distance when last found: {binned(found[keep], last[keep])}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
