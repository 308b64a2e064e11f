"""Where the ten-minute one-track scene's sprite counts as missing: the first SECONDS of it.

Streams the eval's first held-out track scene (an orange triangle on night; `streamer eval
--seconds 600 --scenes 1 --sets track` streams the same, longer) with the shipped model's own
settings, scores it as the eval does (`score_frames`), and prints every video frame where the sprite
is missing with the mean colour of the pixels round its track point: a sprite drawn in another
colour reads as missing, as a sprite that is gone does (docs/model_history.md, "After v15").

    python docs/eval/missing_frames.py 16
1 thread, bf16."""

import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, score_frames, sprite_masks, stream_clip, stream_frames
from streamer.world.scenes import World


def main(seconds: float) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(dtype=torch.bfloat16)
    own = pipe.stream_defaults or {}
    clip = World().clip(HELD_OUT_SEEDS[0], stream_frames(seconds, pipe.fps))
    frames, _ = stream_clip(pipe, clip, own.get("policy", "window"), own.get("policy_args", {}), None, 0)
    missing = np.asarray(score_frames(frames, clip).missing)
    missing = missing[:, 0] if missing.ndim == 2 else missing
    sprite = clip.scene.sprites[0]
    print(f"{clip.prompt}: the sprite's colour {sprite.rgb}; missing in video frames {np.nonzero(missing == 1)[0].tolist()}")
    for t in np.nonzero(missing == 1)[0]:
        x, y = (int(round(v)) for v in clip.trajectory.tracks[t, 0])
        near = frames[t, max(0, y - 3):y + 4, max(0, x - 3):x + 4].reshape(-1, 3).mean(0)
        found = int(sprite_masks(frames[t], clip.scene.sprites)[0].sum())
        print(f"  frame {t} (latent frame {(t + 3) // 4}): track ({x}, {y}), {found} px of its colour, "
              f"mean RGB round the track point {tuple(int(v) for v in near.round())}")


if __name__ == "__main__":
    main(float(sys.argv[1]))
