"""Where a prompt alone's sprite is lost: the 60-s eval's four text-only streams, each frame's
"found" (as `streamer eval`: a sprite-like blob of the named colour) binned by how far from the
frame's nearest edge the sprite was, both the true sprite and the model's own sprite when last found.
The world bounces a prompt alone's sprite off the walls (spawn layout), which a DiT that knows only
relative positions (RoPE) cannot see coming.

    python docs/eval/text_walls.py WEIGHTS_DIR [SECONDS] [STRIP.png]   # default 60; 1 thread, bf16 (~4 min)

STRIP.png: 12 frames, 10 apart, from just before the longest loss of a sprite last seen within
14 px of an edge (of all four streams), labelled with the stream's time in seconds."""

import sys

import cv2
import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import World, is_sprite_blob, largest_blob, stream_clip, text_only_clips

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


def longest_wall_loss(found: np.ndarray, last: np.ndarray) -> tuple[int, int]:
    """(first frame, length) of the longest run of frames without the sprite whose last sighting was
    within BINS[1] px of an edge; (0, 0) when there is none."""
    best, t = (0, 0), 0
    while t < len(found):
        if not found[t] and last[t] < BINS[1]:
            end = t
            while end < len(found) and not found[end]:
                end += 1
            best = max(best, (t, end - t), key=lambda b: b[1])
            t = end
        t += 1
    return best


def write_strip(frames: np.ndarray, start: int, path: str, fps: float = 16.0) -> None:
    """12 frames 10 apart from 10 frames before `start`, each labelled with its time, 2x size."""
    tiles = []
    for i in range(max(0, start - 10), min(len(frames), start + 110), 10):
        tile = cv2.resize(frames[i], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        cv2.putText(tile, f"{i / fps:.1f} s", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(np.pad(tile, ((0, 0), (0, 4), (0, 0)), constant_values=255))
    cv2.imwrite(path, np.concatenate(tiles, 1)[:, :-4, ::-1])


def main(weights: str, seconds: int = 60, strip: str | None = None) -> None:
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
            if found[t]:
                seen = edge_distance(np.array([xx[blob].mean(), yy[blob].mean()]), w, h)
        every.append((found, last, frames))
        print(f"{clip.prompt}: found {found.mean():.2f}", flush=True)
        print(f"  by the true sprite's distance from the edge: {binned(found, true)}")
        print(f"  by the model's sprite's, when last found:     {binned(found[1:], last[1:])}", flush=True)
    if strip:
        losses = [(longest_wall_loss(f, la), fr) for f, la, fr in every]
        (start, length), frames = max(losses, key=lambda x: x[0][1])
        write_strip(frames, start, strip)
        print(f"{strip}: the longest loss after an edge, {length} frames from {start / 16:.1f} s")
    found, last = (np.concatenate(a) for a in list(zip(*every))[:2])
    keep = ~np.isnan(last)
    print(f"all four, by the model's sprite's distance when last found: {binned(found[keep], last[keep])}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]), *sys.argv[3:4])
