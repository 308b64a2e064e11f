"""Why a prompt alone's sprite is not found: every frame of the 60-s eval's four text-only streams,
classified by the largest blob of the named colour (RGB distance < COLOUR_TOL, as `streamer eval`):
none (under 0.05x the drawn area), too small (< 0.35x), too big (> 3x), ragged (IoU < 0.5 with the
best-fitting shape) or found; and the share of frames with two or more blobs of >= 0.35x.

    python docs/eval/text_misses.py WEIGHTS_DIR [SECONDS]   # default 60; 1 thread, bf16 (~4 min)"""

import sys

import cv2
import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import (COLOUR_TOL, TEXT_MAX_AREA, TEXT_MIN_AREA, TEXT_MIN_IOU, UNIT_AREA, World,
                                     has_colour, largest_blob, shape_of, stream_clip, text_only_clips)


def main(weights: str, seconds: int = 60) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(weights, device=torch.device("cpu"), dtype=torch.bfloat16)
    d = pipe.stream_defaults or {}
    for clip in text_only_clips(World(), 4, 16 * seconds + 1):
        frames, _ = stream_clip(pipe, clip, d.get("policy", "window"), d.get("policy_args", {}), 4, 0, tracks=False)
        sprite = clip.scene.sprites[0]
        drawn = UNIT_AREA[sprite.shape] * sprite.radius**2
        counts = dict.fromkeys(("none", "small", "big", "ragged", "found"), 0)
        several = 0
        for frame in frames:
            blob = largest_blob(frame, sprite.rgb)
            ratio = blob.sum() / drawn
            mask = has_colour(frame, sprite.rgb, COLOUR_TOL).astype(np.uint8)
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            several += int((stats[1:, cv2.CC_STAT_AREA] >= TEXT_MIN_AREA * drawn).sum() >= 2)
            kind = ("none" if ratio < 0.05 else "small" if ratio < TEXT_MIN_AREA else "big" if ratio > TEXT_MAX_AREA
                    else "ragged" if shape_of(blob)[1] < TEXT_MIN_IOU else "found")
            counts[kind] += 1
        n = len(frames)
        print(f"{clip.prompt}: " + ", ".join(f"{k} {v / n:.3f}" for k, v in counts.items())
              + f"; two or more blobs {several / n:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60)
