"""Whether a decoder makes motion jump at its latent frames: the first held-out track scenes through
the autoencoder alone, the sprite's centroid step from each video frame to the next (px), by where
the frame sits in its latent frame's group of four, beside the true track's (docs/model_history.md,
"After v16").

The decoder makes four video frames from each latent frame. A sprite moving at a steady speed
should move as far into each of them; a decoder that draws the four alike makes it stand for three
frames and jump into the first of the next group (its step there larger than the truth's).

    python docs/eval/motion_steps.py SECONDS SCENES WEIGHTS_DIR [WEIGHTS_DIR ...]

Each WEIGHTS_DIR holds vae.safetensors and dit.safetensors (the pipeline loads both; only the
autoencoder is used). fp32, 1 thread; ~30 s per folder for 20 s and 2 scenes here."""

import argparse

import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import numpy as np
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, MIN_PIXELS, reference_frames, sprite_masks, stream_frames
from streamer.world.scenes import World


def centroid_steps(frames: np.ndarray, clip) -> tuple[np.ndarray, np.ndarray]:
    """The first sprite's centroid step into each frame 1..T-1 (px, NaN where it is not found) and
    its true track's, both float [T - 1]."""
    h, w = frames.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    cents = np.full((len(frames), 2), np.nan)
    for t, frame in enumerate(frames):
        mask = sprite_masks(frame, clip.scene.sprites)[0]
        if mask.sum() >= MIN_PIXELS:
            cents[t] = xx[mask].mean(), yy[mask].mean()
    track = clip.trajectory.tracks[: len(frames), 0]
    return np.linalg.norm(np.diff(cents, axis=0), axis=1), np.linalg.norm(np.diff(track, axis=0), axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", type=float)
    ap.add_argument("scenes", type=int)
    ap.add_argument("weights", nargs="+")
    args = ap.parse_args()
    world = World()
    for weights in args.weights:
        pipe = Pipeline.load_default(weights, device="cpu", dtype=torch.float32)
        torch.set_num_threads(1)  # after loading: Pipeline.load sets the machine's cores
        steps, truth = [], []
        for seed in HELD_OUT_SEEDS[: args.scenes]:
            clip = world.clip(seed, stream_frames(args.seconds, pipe.fps))
            s, t = centroid_steps(reference_frames(pipe, clip), clip)
            steps.append(s)
            truth.append(t)
        steps, truth = np.concatenate(steps), np.concatenate(truth)
        phase = np.arange(1, len(steps) + 1) % 4  # frame t's place in its group: 1 = the group's first
        cols = [f"{np.nanmean(steps[phase == p]):.2f} / {truth[phase == p].mean():.2f}" for p in (1, 2, 3, 0)]
        print(f"{weights}: step into a group's 1st, 2nd, 3rd, 4th frame (decoded / true, px): {', '.join(cols)}")


if __name__ == "__main__":
    main()
