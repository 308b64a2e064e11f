"""Where the border band's change comes from: the autoencoder's round trip, its decoder on a steady
latent, and the shipped model's stream, each scored in `streamer eval`'s 8-px band against the
interior (docs/model_history.md, "After v16").

For each, the mean change (0-255, over RGB) in the band / inside it:
- the round trip of the eval's held-out prompt + tracks scenes, on pixels the true clip keeps
  static: against frame 0 (what the eval reads), against frame 4, and frame to frame;
- the decoder alone on one latent frame of each scene (the round trip's 5th) repeated, frame to
  frame: any change there is the decoder's own, since its input does not change;
- the stream of the eval's first track scene (the shipped model's own settings), far from the
  sprite as the eval scores it: against frame 0, 4 and 8, and frame to frame; and the latents'
  own steadiness there: per ring of latent cells from the edge, the median of the drift anchor's
  per-cell difference from its reference (`streamer.anchor`) once the drift is off.

    python docs/eval/border_flicker.py SECONDS SCENES [--stream-seconds 60] [--weights DIR]
SECONDS of each of SCENES held-out scenes through the autoencoder; the stream is --stream-seconds
long. DIR (default: the shipped weights) holds vae.safetensors and dit.safetensors. 1 thread; the
autoencoder in fp32, the stream in bf16; ~30 s for 20 s, 4 scenes and 60 s here."""

import argparse

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

import streamer.anchor as anchor
from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, border_band, reference_frames, stream_clip, stream_frames
from streamer.world.scenes import World
from streamer.world.train import to_video


def band_interior(change: np.ndarray, keep: np.ndarray) -> str:
    """'band/interior' means of change [T, H, W] where keep ([T, H, W] or [H, W]) holds."""
    keep = np.broadcast_to(keep, change.shape)
    band = np.broadcast_to(border_band(*change.shape[1:]), change.shape)
    return f"{change[keep & band].mean():.2f}/{change[keep & ~band].mean():.2f}"


def autoencoder(pipe: Pipeline, clip) -> str:
    ref = reference_frames(pipe, clip).astype(np.float32)
    truth = clip.frames[: len(ref)].astype(np.float32)
    static = (np.abs(truth - truth[:1]).mean(-1) < 1).all(0)
    vs = lambda k: band_interior(np.abs(ref[k + 1:] - ref[k]).mean(-1), static)  # noqa: E731
    f2f = band_interior(np.abs(ref[1:] - ref[:-1]).mean(-1), static)
    z = pipe.decoder.encode(to_video(clip.frames[None, :33]))
    steady = pipe.decoder.decode(z[:, :, 4:5].repeat(1, 1, 12, 1, 1), pipe.decoder.new_state())
    v = (steady[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5
    dec = band_interior(np.abs(v[9:] - v[8:-1]).mean(-1), np.ones(v.shape[1:3], bool))
    return f"round trip vs frame 0 {vs(0)}, vs frame 4 {vs(4)}, frame to frame {f2f}; decoder on a steady latent {dec}"


def stream(pipe: Pipeline, seconds: float) -> str:
    rms: list[np.ndarray] = []
    original = anchor.anchor_latents

    def spy(latents, reference):
        rms.append(anchor.residual(latents, reference)[2][0, 0].numpy())  # [n, h, w]
        return original(latents, reference)

    own = pipe.stream_defaults or {}
    clip = World().clip(HELD_OUT_SEEDS[0], stream_frames(seconds, pipe.fps))
    anchor.anchor_latents = spy
    try:
        frames, _ = stream_clip(pipe, clip, own.get("policy", "window"), own.get("policy_args", {}), None, 0)
    finally:
        anchor.anchor_latents = original
    f = frames.astype(np.float32)
    t_len, h, w = f.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w]
    r = clip.scene.sprites[0].radius * 2.2
    far = np.stack([(xx - x) ** 2 + (yy - y) ** 2 > r * r for x, y in clip.trajectory.tracks[:t_len, 0]])
    vs = lambda k: band_interior(np.abs(f[k + 1:] - f[k]).mean(-1), far[k + 1:] & far[k])  # noqa: E731
    f2f = band_interior(np.abs(f[1:] - f[:-1]).mean(-1), far[1:] & far[:-1])
    out = f"{clip.prompt}, streamed: vs frame 0 {vs(0)}, vs frame 4 {vs(4)}, vs frame 8 {vs(8)}, frame to frame {f2f}"
    if rms:
        cells = np.concatenate(rms)
        lh, lw = cells.shape[1:]
        ring = np.minimum.outer(np.minimum(np.arange(lh), lh - 1 - np.arange(lh)),
                                np.minimum(np.arange(lw), lw - 1 - np.arange(lw)))
        out += "\n  its latent cells' difference from the anchor's reference, median by ring from the edge: " + \
            " ".join(f"{np.median(cells[:, ring == k]):.3f}" for k in range(int(ring.max()) + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", type=float)
    ap.add_argument("scenes", type=int)
    ap.add_argument("--stream-seconds", type=float, default=60.0)
    ap.add_argument("--weights", default="streamer/weights")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(args.weights, device="cpu", dtype=torch.float32)
    torch.set_num_threads(1)  # after loading: Pipeline.load sets the machine's cores
    world = World()
    for seed in HELD_OUT_SEEDS[: args.scenes]:
        clip = world.clip(seed, stream_frames(args.seconds, pipe.fps))
        print(f"{clip.prompt}: {autoencoder(pipe, clip)}", flush=True)
    pipe = Pipeline.load_default(args.weights, device="cpu", dtype=torch.bfloat16)
    torch.set_num_threads(1)
    print(stream(pipe, args.stream_seconds))


if __name__ == "__main__":
    main()
