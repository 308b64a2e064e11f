"""The autoencoder's own border artefact: the eval's held-out prompt + tracks scenes through the
autoencoder alone (no DiT), scored by `streamer eval`'s border / interior change (its 8-px band,
`evaluate.BORDER`), with the mean change from the first frame by distance from the frame's edge
(px 0-19) and the band's change over time, on pixels the true clip keeps static (so any change
there is the autoencoder's).

    python docs/eval/border_probe.py SECONDS SCENES [WEIGHTS_DIR]

WEIGHTS_DIR (default: the shipped weights) needs vae.safetensors and dit.safetensors (the pipeline
loads both; only the autoencoder is used). fp32, 1 thread; ~40 s per 20-s scene here."""

import argparse

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, border_band, reference_frames, score_frames, stream_frames
from streamer.world.scenes import World


def edge_profile(m: np.ndarray, depth: int = 20) -> list[float]:
    """Mean of m [H, W] (NaN ignored) on the ring of pixels k px from the edge, k = 0..depth-1."""
    h, w = m.shape
    return [float(np.nanmean(np.concatenate([m[k, k:w - k], m[h - 1 - k, k:w - k], m[k:h - k, k], m[k:h - k, w - 1 - k]])))
            for k in range(depth)]


def probe_setup(doc: str) -> tuple[argparse.Namespace, Pipeline]:
    """The autoencoder probes' command line (SECONDS SCENES [WEIGHTS_DIR]) and their pipeline:
    fp32 on the CPU, 1 thread (also used by identity_probe.py)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("seconds", type=float)
    ap.add_argument("scenes", type=int)
    ap.add_argument("weights", nargs="?", default="streamer/weights")
    args = ap.parse_args()
    pipe = Pipeline.load_default(args.weights, device="cpu", dtype=torch.float32)
    torch.set_num_threads(1)  # after loading: Pipeline.load sets the machine's cores
    return args, pipe


def main() -> None:
    args, pipe = probe_setup(__doc__)
    world = World()
    n = stream_frames(args.seconds, pipe.fps)
    for seed in HELD_OUT_SEEDS[: args.scenes]:
        clip = world.clip(seed, n)
        ref = reference_frames(pipe, clip)
        truth = clip.frames[: len(ref)]
        sc = score_frames(ref, clip)
        print(f"{seed} {clip.prompt}: border {np.nanmean(sc.border_change):.2f} "
              f"interior {np.nanmean(sc.interior_change):.2f} bg {np.nanmean(sc.bg_change):.2f}")
        change = np.abs(ref.astype(np.float32) - ref[:1].astype(np.float32)).mean(-1)  # [T, H, W]
        static = (np.abs(truth.astype(np.float32) - truth[:1].astype(np.float32)).mean(-1) < 1).mean(0) > 0.999
        print("  change by distance from the edge (px 0..19):",
              " ".join(f"{p:.2f}" for p in edge_profile(np.where(static, change.mean(0), np.nan))))
        band = border_band(*static.shape)
        if (static & band).any():
            series, q = change[:, static & band].mean(1), max(len(ref) // 6, 1)
            print("  band over time (sixths):", " ".join(f"{series[i * q:(i + 1) * q].mean():.2f}" for i in range(6)))


if __name__ == "__main__":
    main()
