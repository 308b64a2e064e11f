"""How strong a prompt alone's first sprite is: the first chunk of "a <colour> circle on a <background>
background" streamed from noise, for every other pair of the colours set (19 prompts, seed 0).

    python docs/eval/first_chunk.py WEIGHTS_DIR [--steps 4,16,48] [--tracks] [--threads 1]

Per number of sampling steps (evenly spaced from t=1000, as `streamer generate --steps`):
- amplitude: the chunk's latent projected on the true sprite's, a = <x - bg, s - bg> / |s - bg|^2 over
  the first three latent frames (bg: the true background's latents, s: the true clip's), so 1 is the
  true sprite where the world draws it and 0 background only; "at best" is the largest a over the
  sprite shifted by up to 3 latent cells (24 px) each way: a sprite that is strong but misplaced
  scores high there and low at the true cells;
- found: the first video frame holds >= 6 pixels within RGB distance 90 of the sprite's colour;
- offset: median distance (px) of those pixels' centroid from the spawn point (the centre).
--tracks streams with the clip's tracks as well (the sprite's place given)."""

from __future__ import annotations

import argparse

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.session import Session
from streamer.world.evaluate import World, colour_clips, has_colour
from streamer.world.train import to_video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--steps", default="4", help="comma-separated numbers of sampling steps")
    ap.add_argument("--tracks", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = Pipeline.load_default(a.weights, device=torch.device("cpu"), dtype=torch.float32)
    vae, d = pipe.decoder.vae, pipe.stream_defaults or {}
    steps = [int(s) for s in a.steps.split(",")]
    rows: dict[int, list] = {s: [] for s in steps}
    for clip in colour_clips(World(), 9)[::2]:
        with torch.inference_mode():
            true = vae.encode(to_video(clip.frames[None]))[:, :, :3]
            bg = vae.encode(to_video(np.repeat(clip.background[None], 9, 0)[None]))[:, :, :3]
        sprite = true - bg
        for n in steps:
            cfg = pipe.stream_config(size=(128, 128), policy=d.get("policy"), policy_args=d.get("policy_args", {}),
                                     steps=n, seed=0)
            chunk = Session(pipe, clip.prompt, cfg, tracks=clip.trajectory if a.tracks else None).step()
            x = chunk.latents.float()[:, :, :3] - bg
            norm = float((sprite * sprite).sum())
            at_true = float((x * sprite).sum()) / norm
            at_best = max(float((x * torch.roll(sprite, (dy, dx), (-2, -1))).sum()) / norm
                          for dy in range(-3, 4) for dx in range(-3, 4))
            hit = has_colour(chunk.frames[0], clip.scene.sprites[0].rgb, 90)
            offset = np.nan
            if hit.sum() >= 6:
                yy, xx = np.nonzero(hit)
                cx, cy = clip.trajectory.tracks[0, 0]
                offset = float(np.hypot(xx.mean() - cx, yy.mean() - cy))
            rows[n].append((at_true, at_best, hit.sum() >= 6, offset))
    for n, r in rows.items():
        v = np.array(r, dtype=float)
        print(f"{a.weights}{' (tracks)' if a.tracks else ''}, {n} steps: amplitude {v[:, 0].mean():.2f} "
              f"(at best {v[:, 1].mean():.2f}), found {v[:, 2].mean():.2f}, offset {np.nanmedian(v[:, 3]):.1f} px")


if __name__ == "__main__":
    main()
