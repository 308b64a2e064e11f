"""Where a stream's background change comes from: the eval's first two held-out prompt + tracks
scenes, streamed by a model (its own cache policy) and through the autoencoder alone, with the mean
absolute change (0-255, far from every sprite, as `streamer eval`'s background change) of each
stretch of frames from the stream's frame 0 and from frame 9 (the first frame of the second chunk:
a chunk of 3 latent frames is 12 video frames, the first 9), the anchor frame itself left out
("-": a stretch the stream does not reach). The autoencoder's change is flat; a
model that redraws the texture each chunk shows ~1 within its second chunk (frames 9-20, as the
autoencoder) and more from the third on.

    python docs/eval/chunk_jitter.py WEIGHTS_DIR [SECONDS]   # default 10; 1 thread, bf16"""

import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from settling import far_masks  # this folder's: the eval's background pixels, per frame
from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, World, reference_frames, stream_clip, stream_frames

STRETCHES = ((1, 9), (9, 21), (21, 45), (45, 96), (96, None))  # video frames [start, end)


def main(weights: str, seconds: float = 10.0) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(weights, dtype=torch.bfloat16)
    defaults = pipe.stream_defaults or {}
    world = World()
    print("stretches (video frames):", ", ".join(f"{a}-{b - 1 if b else 'end'}" for a, b in STRETCHES))
    for seed in HELD_OUT_SEEDS[:2]:
        clip = world.clip(seed, stream_frames(seconds, pipe.fps))
        frames, _ = stream_clip(pipe, clip, defaults.get("policy", "window"), defaults.get("policy_args", {}), 4, 0)
        ref = reference_frames(pipe, clip)
        print(clip.prompt)
        t_len = len(frames)
        far = far_masks(clip, frames)
        for name, video in (("model", frames), ("autoencoder", ref)):
            video = video.astype(np.float32)
            for anchor in (0, 9):
                d = np.array([np.abs(video[t] - video[anchor]).mean(-1)[far[t] & far[anchor]].mean()
                              for t in range(t_len)])
                d[anchor] = np.nan  # a frame's change from itself is no change
                cells = [np.nanmean(d[a:b]) if np.isfinite(d[a:b]).any() else None for a, b in STRETCHES]
                print(f"{name:11s} from frame {anchor}: " + " ".join("-" if c is None else f"{c:.2f}" for c in cells))


if __name__ == "__main__":
    main(sys.argv[1], *(float(a) for a in sys.argv[2:3]))
