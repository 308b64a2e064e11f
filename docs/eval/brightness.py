"""How much of a tracked stream's background change and smear is one brightness shift.

On the eval's held-out prompt + tracks scenes of one sprite, streamed by a model (its own settings)
and through the autoencoder alone, prints:

- background change from frame 0 (as `streamer eval`: mean absolute change, 0-255, of the pixels
  far from the sprite now and in frame 0); its shift, the mean absolute value of those pixels'
  mean colour change (averaged over the channels); and the rest, their mean absolute change once
  each frame's mean colour change is taken off. Means of absolute values: the two do not add up to
  the change; a stream whose shift is large against the autoencoder's has moved its brightness;
- smear (as `streamer eval`) by how long ago the sprite left a path pixel, in video frames: a tail
  right behind the sprite shows in the first bins, colour that a brightness shift alone moves toward
  the sprite's shows the same in every bin, and the autoencoder's is the floor ("nan": a bin the
  stream is too short to reach);
- for the model, the latent mean of a few chunks (over the frame, per channel, the first 8 channels)
  minus the true clip's encoded latents' mean: a drift of the latents, not of the decoder, shows
  here. Chunks count from the first one made: hidden chunks (the model's `hidden_chunks`) first.

    python docs/eval/brightness.py WEIGHTS_DIR [SECONDS] [SCENES]   # default 40 s, 2 one-sprite scenes

SCENES counts the held-out scenes of one sprite (scenes of two or three are passed over; the first
two one-sprite scenes are night and snow). WEIGHTS_DIR: a `streamer train` run folder, or
streamer/weights. 1 thread, bf16, as the history's `streamer eval --dtype bf16` runs."""

import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from settling import far_masks  # this folder's: the eval's background pixels, per frame
from streamer.pipeline import Pipeline
from streamer.session import Session
from streamer.world.evaluate import HELD_OUT_SEEDS, SMEAR_LAG, World, reference_frames, stream_frames

AGES = ((SMEAR_LAG, 8), (8, 16), (16, 32), (32, 64), (64, None))  # video frames since the sprite left


def shift_split(frames: np.ndarray, far: np.ndarray) -> tuple[float, float, float]:
    """(background change, its shift, the rest) averaged over frames 1.., as defined above."""
    f = frames.astype(np.float32)
    total, shift, rest = [], [], []
    for t in range(1, len(f)):
        d = f[t][far[t]] - f[0][far[t]]  # [N, 3]
        off = d.mean(0)
        total.append(np.abs(d).mean())
        shift.append(np.abs(off).mean())
        rest.append(np.abs(d - off).mean())
    return float(np.mean(total)), float(np.mean(shift)), float(np.mean(rest))


def smear_by_age(frames: np.ndarray, clip, far: np.ndarray) -> list[float]:
    """The eval's smear of a one-sprite clip, per bin of AGES (NaN: fewer than 20 pixels ever)."""
    f = frames.astype(np.float32)
    h, w = f.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    sprite = clip.scene.sprites[0]
    rgb = np.asarray(sprite.rgb, np.float32)
    x0, y0 = clip.trajectory.tracks[0, 0]
    foot0 = (xx - x0) ** 2 + (yy - y0) ** 2 < (sprite.radius * 1.6) ** 2
    ref_dist = np.linalg.norm(f[0] - rgb, axis=-1)
    left = np.full((h, w), -(10**9))  # the last frame the sprite covered each pixel
    bins: list[list[float]] = [[] for _ in AGES]
    for t in range(len(f)):
        x, y = clip.trajectory.tracks[t, 0]
        left[(xx - x) ** 2 + (yy - y) ** 2 < (sprite.radius * 0.8) ** 2] = t
        toward = np.clip((ref_dist - np.linalg.norm(f[t] - rgb, axis=-1)) / np.maximum(ref_dist, 1.0), 0, 1)
        base = far[t] & ~foot0 & (ref_dist > 40.0)
        for i, (a, b) in enumerate(AGES):
            m = base & (t - left >= a) & (t - left < (b or 10**9))
            if m.sum() >= 20:
                bins[i].append(float(toward[m].mean()))
    return [float(np.mean(b)) if b else float("nan") for b in bins]


def stream_with_latents(pipe, clip, defaults: dict) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The clip streamed as `streamer eval` streams it (frames [T, H, W, 3]), and per chunk made
    (hidden ones first) its latents' mean per channel minus the true clip's encoded ones (frames 1..), [C]."""
    cfg = pipe.stream_config(size=(clip.trajectory.width, clip.trajectory.height), policy=defaults.get("policy", "window"),
                             policy_args=defaults.get("policy_args", {}), steps=None, seed=0, guidance=None,
                             hidden_chunks=None)
    session = Session(pipe, clip.prompt, cfg, tracks=clip.trajectory)
    made = []
    generate = session._generate_one

    def keep():
        chunk = generate()
        made.append(chunk.latents.float().mean((0, 3, 4)).cpu())  # [C, F]
        return chunk

    session._generate_one = keep
    n = (clip.trajectory.num_frames - 1) // 4 + 1
    frames = []
    while sum(len(f) for f in frames) < clip.trajectory.num_frames:
        frames.append(session.step().frames)
    video = torch.from_numpy(clip.frames[: 1 + 4 * (n - 1)]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.inference_mode():
        truth = pipe.decoder.vae.encode(video.to(pipe.decoder.device, pipe.decoder.dtype)).float()[0]
    true_mean = truth.mean((2, 3))[:, 1:].mean(1).cpu()  # [C]
    return np.concatenate(frames)[: clip.trajectory.num_frames], [m.mean(1) - true_mean for m in made]


def main(weights: str, seconds: float = 40.0, scenes: int = 2) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(weights, dtype=torch.bfloat16)
    defaults = pipe.stream_defaults or {}
    world = World()
    ages = ", ".join(f"{a}-{b - 1 if b else 'end'}" for a, b in AGES)
    done = 0
    for seed in HELD_OUT_SEEDS:
        if done == scenes:
            break
        clip = world.clip(seed, stream_frames(seconds, pipe.fps))
        if len(clip.scene.sprites) != 1:
            continue
        done += 1
        print(clip.prompt)
        model, drift = stream_with_latents(pipe, clip, defaults)
        for name, frames in (("model", model), ("autoencoder", reference_frames(pipe, clip))):
            far = far_masks(clip, frames)
            far &= far[0]  # as the eval: far from the sprite now and in frame 0
            total, shift, rest = shift_split(frames, far)
            smear = smear_by_age(frames, clip, far)
            print(f"  {name:11s} background change {total:.2f}, its shift {shift:.2f}, the rest {rest:.2f}; "
                  f"smear by frames since the sprite left ({ages}): " + " ".join(f"{s:.4f}" for s in smear))
        np.set_printoptions(precision=3, suppress=True, linewidth=160)
        for k in sorted({0, 1, 2, 3, 5, len(drift) - 1}):
            if k < len(drift):
                print(f"  latents of chunk {k:3d} (0: the first made) minus the truth's, channels 0-7: {drift[k][:8].numpy()}")


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        print("usage: python docs/eval/brightness.py WEIGHTS_DIR [SECONDS] [SCENES]", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 40.0, int(sys.argv[3]) if len(sys.argv) > 3 else 2)
