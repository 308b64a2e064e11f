"""How much of the drag set's smear is the background's brightness moving: v14 (the anchor off)
against the shipped drift anchor.

The eval's smear reads how far each vacated path pixel has moved from the first frame's background
toward the sprite's colour, clipped at 0 per pixel: a background that darkens under a light sprite
hides colour left on the path, one that holds its level shows all of it. For drag-set scenes
(`stream_drag`, seed 0, the stroke at the first chunk boundary after 4 s), prints for the anchor
off and on: the mean colour change (RGB, 0-255) of the pixels far from the sprite (over 3 radii)
against the stroke's first frame, per quarter of the stream after it; the eval's smear; and the
smear again with each frame's far-pixel mean change taken off first (shift-free).

    python docs/eval/smear_shift.py SECONDS SCENES       # e.g. 60 2,3 (a white diamond on stone,
                                                         # a purple diamond on grass)
1 thread, bf16 (docs/model_history.md, "After v14")."""

import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import (drag_start_frame, score_drag, stream_drag, stream_frames,
                                     text_only_clips)
from streamer.world.scenes import World


def main(seconds: float, scenes: list[int]) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(dtype=torch.bfloat16)
    own = pipe.stream_defaults or {}
    world = World()
    clips = text_only_clips(world, max(scenes) + 1, stream_frames(seconds, pipe.fps))
    at = drag_start_frame(pipe, seconds)
    for i in scenes:
        clip = clips[i]
        for on in (False, True):
            frames, _, stroke = stream_drag(pipe, world, clip, at, own.get("policy", "window"),
                                            own.get("policy_args", {}), None, 0, drift_anchor=on)
            tail = frames[at:].astype(np.float32)
            h, w = tail.shape[1:3]
            yy, xx = np.mgrid[0:h, 0:w]
            radius = clip.scene.sprites[0].radius
            shift = []
            for t in range(len(tail)):
                x, y = stroke.tracks[at + t, 0]
                shift.append(tail[t][(xx - x) ** 2 + (yy - y) ** 2 > (3 * radius) ** 2].mean(0))
            shift = np.array(shift) - shift[0]
            q = len(shift) // 4
            quarters = " | ".join(" ".join(f"{v:+.1f}" for v in shift[j * q:(j + 1) * q].mean(0)) for j in range(4))
            level = np.clip(tail - shift[:, None, None, :], 0, 255).astype(np.uint8)
            smear = np.nanmean(score_drag(frames, clip, stroke, at).after.smear)
            free = np.nanmean(score_drag(np.concatenate([frames[:at], level]), clip, stroke, at).after.smear)
            print(f"{clip.prompt}, anchor {'on ' if on else 'off'}: background change by quarter (RGB) {quarters}; "
                  f"smear {smear:.4f}, shift-free {free:.4f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python docs/eval/smear_shift.py SECONDS SCENES", file=sys.stderr)
        sys.exit(2)
    main(float(sys.argv[1]), [int(i) for i in sys.argv[2].split(",")])
