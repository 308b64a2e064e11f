"""What a model draws after a tracked sprite leaves the frame: the held-out scene of the 60-s
eval's prompt + tracks set streamed by each model (30 s), and a strip of frames around its track's
first exit (every 6 frames from 12 before; "out": the track is out of view, "P": a phantom, as the
eval's phantom column counts it; the ring marks the track). Prints, per model, the frames where the
track leaves the view and the share of phantom frames in the 48 frames after each exit.

    python docs/eval/exit_strip.py SCENE OUT.png name=WEIGHTS_DIR [name=WEIGHTS_DIR ...]

SCENE: an index in the eval's held-out scenes (3: "a purple diamond on a snow background", whose
sprite crosses the frame). 1 thread, bf16, the model's own cache policy; about 20 s per model
here. The first row is the true clip."""

import argparse

import cv2
import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, World, phantom_frames, stream_clip, stream_frames


def strip(frames: np.ndarray, clip, exit_t: int, label: str, phantom: np.ndarray | None) -> np.ndarray:
    """One row: frames exit_t - 12 .. exit_t + 54 every 6, at 2x, labelled."""
    vis, tiles = clip.trajectory.visible[:, 0], []
    for t in range(exit_t - 12, exit_t + 60, 6):
        tile = cv2.resize(frames[t], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST).copy()
        x, y = clip.trajectory.tracks[t, 0]
        cv2.circle(tile, (int(x * 2), int(y * 2)), 4, (0, 0, 0), 1)
        text = f"{label} {t - exit_t:+d}{'' if vis[t] else ' out'}{' P' if phantom is not None and phantom[t] else ''}"
        cv2.putText(tile, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255))
    return np.concatenate(tiles, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=int)
    ap.add_argument("out")
    ap.add_argument("models", nargs="+", help="name=WEIGHTS_DIR")
    args = ap.parse_args()
    torch.set_num_threads(1)
    world, rows = World(), []
    for i, spec in enumerate(args.models):
        name, path = spec.split("=", 1)
        pipe = Pipeline.load_default(path, device=torch.device("cpu"), dtype=torch.bfloat16)
        d = pipe.stream_defaults or {}
        clip = world.clip(HELD_OUT_SEEDS[args.scene], stream_frames(30, pipe.fps))
        frames, _ = stream_clip(pipe, clip, d.get("policy", "window"), d.get("policy_args", {}), 4, 0)
        vis = clip.trajectory.visible.any(1)
        exits = [t for t in range(1, len(vis)) if vis[t - 1] and not vis[t] and 12 <= t < len(vis) - 60]
        if not exits:
            raise SystemExit(f"scene {args.scene}: no track leaves the view within 30 s")
        ph = phantom_frames(frames, clip)
        print(f"{name}: exits at frames {exits}; phantom in {ph.mean():.0%} of frames; in the 48 after each exit: "
              + ", ".join(f"{ph[e:e + 48].mean():.0%}" for e in exits), flush=True)
        if i == 0:
            rows.append(strip(clip.frames, clip, exits[0], "truth", None))
        rows.append(strip(frames, clip, exits[0], name, ph))
    cv2.imwrite(args.out, np.concatenate(rows, 0)[..., ::-1])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
