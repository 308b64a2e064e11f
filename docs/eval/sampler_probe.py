"""Does the sampler move the background's chunk-to-chunk change? Streams the eval's first SCENES
held-out prompt + tracks scenes (one or two tracks each) with the model's own cache policy under
sampler variants and prints, per variant, the eval's track-set columns (`streamer.world.evaluate.score_frames`: error, missing,
background change from the stream's first frame, border / interior, smear) and the mean absolute
change between consecutive frames.

    python docs/eval/sampler_probe.py WEIGHTS_DIR SECONDS SCENES "VARIANT;VARIANT;..."

A variant is `sde` (Self-Forcing's sampler: each step's x0 re-noised with fresh noise) or `ode`
(the re-noise uses the noise the flow implies, (x_t - (1 - sigma) x0) / sigma: deterministic
after the first draw), with `:T1,T2,...` its timesteps before the shift-5 warp (default
1000,750,500,250). 1 thread, bf16; about 1 min per variant and 20 s scene here."""

import dataclasses
import sys
import time

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

import streamer.session as session_module
from streamer.pipeline import Pipeline
from streamer.sampler import denoise
from streamer.world.evaluate import HELD_OUT_SEEDS, World, score_frames, stream_clip, stream_frames


def ode_denoise(flow, noise, timesteps, draw, num_train_timesteps=1000):
    """`streamer.sampler.denoise` with the flow's own noise estimate in place of a fresh draw: the
    re-noise of x0 = x_t - sigma v uses eps = x_t + (1 - sigma) v, the noise that x_t implies."""
    last = {}

    def recording_flow(x, t):
        last["x"], last["t"], last["v"] = x, t, flow(x, t)
        return last["v"]

    def implied_noise(shape):
        sigma = last["t"] / num_train_timesteps
        return (last["x"].double() + (1 - sigma) * last["v"].double()).float()

    return denoise(recording_flow, noise, timesteps, implied_noise, num_train_timesteps)


def main(weights: str, seconds: float, scenes: int, variants: str) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(weights, dtype=torch.bfloat16)
    world = World()
    clips = [world.clip(s, stream_frames(seconds, pipe.fps)) for s in HELD_OUT_SEEDS[:scenes]]
    policy = (pipe.stream_defaults or {}).get("policy", "window")
    args = (pipe.stream_defaults or {}).get("policy_args", {})
    base_config = pipe.stream_config
    for var in variants.split(";"):
        kind, _, steps = var.partition(":")
        steps = tuple(int(s) for s in steps.split(",")) if steps else (1000, 750, 500, 250)
        session_module.denoise = ode_denoise if kind == "ode" else denoise

        def config(*a, variant_steps=steps, **k):
            c = base_config(*a, **k)
            return dataclasses.replace(c, sampler=dataclasses.replace(c.sampler, steps=variant_steps))

        pipe.stream_config = config
        t0, rows = time.time(), []
        for clip in clips:
            frames, _ = stream_clip(pipe, clip, policy, args, len(steps), 0)
            sc = score_frames(frames, clip)
            f2f = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean()
            rows.append([np.nanmean(v) for v in (sc.err, sc.missing, sc.bg_change, sc.border_change,
                                                  sc.interior_change, sc.smear)] + [f2f])
        r = np.nanmean(np.array(rows), 0)
        print(f"{var:28s} err {r[0]:.2f} missing {r[1]:.3f} bg {r[2]:.2f} border / interior {r[3]:.2f} / "
              f"{r[4]:.2f} smear {r[5]:.4f} frame-to-frame {r[6]:.2f} ({time.time() - t0:.0f} s)", flush=True)
    session_module.denoise = denoise


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
