"""A picture of the colours set: every colour on every background as a prompt alone, one frame each.

    python docs/eval/colours_sheet.py OUT.png [--seconds 2] [--threads 1] name=WEIGHTS_DIR [name=WEIGHTS_DIR ...]

For each model (a `streamer train --out` folder, or "default" for the shipped weights) a grid with a
background per row and a colour per column: the frame `--seconds` into the stream of "a <colour>
circle on a <background> background" (streamer.world.evaluate.colour_clips, seed 0, the model's
own cache policy, bf16), black where the pair clashes. Models side by side, each grid labelled."""

import argparse
import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch


def main(argv: list[str]) -> None:
    import cv2

    from streamer.pipeline import Pipeline
    from streamer.world.evaluate import colour_clips, stream_clip, stream_frames
    from streamer.world.scenes import BACKGROUNDS, COLOURS, World

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("models", nargs="+", metavar="name=DIR")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    grids = []
    for item in args.models:
        name, weights = item.split("=", 1)
        pipe = (Pipeline.load(dtype=torch.bfloat16) if weights == "default"
                else Pipeline.load_default(weights, device=torch.device("cpu"), dtype=torch.bfloat16))
        torch.set_num_threads(args.threads)  # after loading: Pipeline.load sets the machine's cores
        d = pipe.stream_defaults or {}
        frames = {}  # (background, colour) -> frame; the clashing pairs are not streamed
        for clip in colour_clips(World(), stream_frames(args.seconds + 1 / pipe.fps, pipe.fps)):
            fr, _ = stream_clip(pipe, clip, d.get("policy", "window"), d.get("policy_args", {}), 4, 0, tracks=False)
            frames[(clip.scene.background, clip.scene.sprites[0].colour)] = fr[int(round(args.seconds * pipe.fps))]
        h, w = next(iter(frames.values())).shape[:2]
        black = np.zeros((h, w, 3), np.uint8)
        rows = [np.concatenate([frames.get((bg, c), black) for c in COLOURS], 1) for bg in BACKGROUNDS]
        grid = np.concatenate(rows, 0)
        bar = np.full((22, grid.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, f"{name}: " + ", ".join(COLOURS) + f" (columns); {', '.join(BACKGROUNDS)} (rows); "
                    f"{args.seconds:g} s", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        grids.append(np.pad(np.concatenate([bar, grid], 0), ((0, 0), (0, 8), (0, 0)), constant_values=255))
    cv2.imwrite(args.out, np.concatenate(grids, 1)[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print("wrote", args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
