"""Where a tracked scene's background change comes from: scenes of the 60-s eval's prompt + tracks
set streamed by each model, with their background change (as `streamer eval`: mean absolute change
from the stream's first frame, 0-255, far from every sprite) over time, the far region's mean colour
(a drift of the whole background shows there; local blotches do not), and the share of frames with
a phantom (`streamer.world.evaluate.phantom_frames`, the eval's "phantom" column: a blob of a
sprite colour farther than 2.2 sprite radii from every track, in the eval's "far" region, where it
counts as background change).

    python docs/eval/bg_scene.py SCENES OUT.png name=WEIGHTS_DIR [name=WEIGHTS_DIR ...] [--seconds 60]

SCENES: indices in the eval's held-out scenes, comma-separated (3: "a purple diamond on a snow
background", where v8's 60-s background change rose most). 1 thread, bf16, the model's own cache
policy; about 30 s per scene and model at 60 s here. OUT.png: the first scene, one row per model,
frames every seconds/5 s, and each model's absolute difference from its first frame at the end
(x4, so a change of 10 shows as 40)."""

import argparse

import cv2
import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import HELD_OUT_SEEDS, World, score_frames, stream_clip, stream_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", help="comma-separated indices, e.g. 0,1,2,3")
    ap.add_argument("out")
    ap.add_argument("models", nargs="+", help="name=WEIGHTS_DIR")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = World()
    rows = []
    scenes = [int(i) for i in args.scenes.split(",")]
    for spec in args.models:
        name, path = spec.split("=", 1)
        pipe = Pipeline.load_default(path, device=torch.device("cpu"), dtype=torch.bfloat16)
        d = pipe.stream_defaults or {}
        fps = pipe.fps
        for scene in scenes:  # one line each; the first scene's also over time, and its strip below
            clip = world.clip(HELD_OUT_SEEDS[scene], stream_frames(args.seconds, fps))
            frames, _ = stream_clip(pipe, clip, d.get("policy", "window"), d.get("policy_args", {}), 4, 0)
            s = score_frames(frames, clip)
            step = int(len(frames) / 5)
            line = f"{name}: {clip.prompt}: bg change {np.nanmean(s.bg_change):.2f}"
            if scene == scenes[0]:
                per = [np.nanmean(s.bg_change[i:i + step]) for i in range(0, len(frames), step)][:5]
                line += (f"; per {step / fps:.0f} s: " + ", ".join(f"{v:.2f}" for v in per)
                         + f"; border {np.nanmean(s.border_change):.2f}, interior {np.nanmean(s.interior_change):.2f}")
                first = clip, frames
            print(line + f"; phantom in {np.nanmean(s.phantom):.0%} of frames", flush=True)
        clip, frames = first
        step = int(len(frames) / 5)
        # the far region's mean colour at the start and the end (the sprites' tracks kept out)
        h, w = frames.shape[1:3]
        yy, xx = np.mgrid[:h, :w]
        for t in (0, len(frames) - 1):
            far = np.ones((h, w), bool)
            for n, sp in enumerate(clip.scene.sprites):
                x, y = clip.trajectory.tracks[t, n]
                far &= (xx - x) ** 2 + (yy - y) ** 2 > (sp.radius * 2.2) ** 2
            print(f"  frame {t} ({t / fps:.0f} s): background mean RGB {frames[t][far].mean(0).round(1).tolist()}")
        picks = [min(i * step, len(frames) - 1) for i in range(6)]
        tiles = [frames[i] for i in picks]
        diff = np.clip(np.abs(frames[-1].astype(np.int16) - frames[0].astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        row = []
        for i, tile in zip(picks + [None], tiles + [diff]):
            t = cv2.resize(tile, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST).copy()
            label = f"{name} {i / fps:.0f} s" if i is not None else f"{name} |end - start| x4"
            ink = (0, 0, 0) if i is not None else (255, 255, 255)  # the difference tile is dark
            cv2.putText(t, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, ink, 1, cv2.LINE_AA)
            row.append(np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255))
        rows.append(np.concatenate(row, 1))
    cv2.imwrite(args.out, np.concatenate(rows, 0)[..., ::-1])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
