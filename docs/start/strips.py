"""The README's pictures of the three ways in: a strip of frames from each video.

    python docs/start/strips.py text.mp4 image.mp4 longer.mp4 --image examples/start.png \
        --tracks examples/start_tracks.json --alone prompt.mp4 --out docs/start

Each strip shows frames every 0.5 s (the continued video: the last original frames, a red bar,
then the new ones); it also prints each sprite's distance from its track (pixels) per video.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from streamer.images import read_video
from streamer.trajectory import Trajectory
from streamer.world.scenes import COLOURS, colour_centroid, parse_prompt

GAP = 4


def strip(frames: list[np.ndarray], marks: set[int] = frozenset()) -> np.ndarray:
    h = frames[0].shape[0]
    parts = []
    for i, f in enumerate(frames):
        parts.append(f)
        if i < len(frames) - 1:
            bar = np.full((h, GAP, 3), 255, np.uint8)
            if i in marks:
                bar[:] = (220, 30, 30)
            parts.append(bar)
    return np.concatenate(parts, 1)


def track_error(video: np.ndarray, prompt: str, traj: Trajectory) -> list[float]:
    """Median distance (px) of each sprite's colour centroid from its own track, over the frames the
    tracks cover (None where the colour is not found counts as inf)."""
    names = [c for c, _ in parse_prompt(prompt)[0]]
    out = []
    for n, colour in enumerate(names):
        d = []
        for i in range(min(len(video), traj.num_frames)):
            c = colour_centroid(video[i], COLOURS[colour], tol=100.0)
            x, y = traj.tracks[i, n]
            d.append(np.inf if c is None else float(np.hypot(c[0] - x, c[1] - y)))
        out.append(float(np.median(d)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("text")
    p.add_argument("image_video")
    p.add_argument("longer")
    p.add_argument("--image", required=True)
    p.add_argument("--tracks", required=True)
    p.add_argument("--prompt", default="a green diamond and a red diamond on a night background")
    p.add_argument("--alone", help="a video from a prompt alone (no tracks): prompt.png, 0.5 s apart for 5 s")
    p.add_argument("--out", default="docs/start")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    traj = Trajectory.load(a.tracks)
    text, image, longer = (np.stack(list(read_video(v))) for v in (a.text, a.image_video, a.longer))
    every = 8  # 0.5 s at 16 fps
    Image.fromarray(strip([text[i] for i in range(0, min(len(text), 48), every)])).save(out / "text.png")
    start = np.asarray(Image.open(a.image).convert("RGB"))
    Image.fromarray(strip([start] + [image[i] for i in range(0, min(len(image), 48), every)], marks={0})).save(
        out / "image.png")
    n_orig = len(image)
    picks = [n_orig - 1 - every * k for k in (2, 1, 0)] + [n_orig - 1 + every * k for k in (1, 2, 3)]
    Image.fromarray(strip([longer[i] for i in picks], marks={2})).save(out / "continue.png")
    for name, v in (("text", text), ("image", image)):
        print(f"{name}: median distance of each sprite from its own track (px): "
              + ", ".join(f"{e:.1f}" for e in track_error(v, a.prompt, traj)))
    print(f"continue: {len(longer)} frames = {n_orig} original + {len(longer) - n_orig} new")
    if a.alone:
        alone = np.stack(list(read_video(a.alone)))
        Image.fromarray(strip([alone[i] for i in range(0, min(len(alone), 80), every)])).save(out / "prompt.png")


if __name__ == "__main__":
    main()
