"""Where a prompt alone's second blob is: streams the eval's text-only set (held-out prompts, no
tracks, the model's default cache policy) and, in every frame where a named colour forms more
sprite-sized blobs (PHANTOM_AREA px) than the prompt names (`second_blob_rate` of `streamer eval`),
measures the extra blob (the second largest): its distance from the largest blob and from where the
sprite was in the first second (what a Deep Sink cache keeps as its sinks), its speed against the
sprite's, and how long each run of such frames lasts. A smear or a sink echo stays put or near the
start; a second sprite moves like the first. Last, where in the stream's rhythm the frames fall:
which latent frame of its chunk (0-2 of 3) and which of that latent frame's 4 video frames a frame
with a second blob comes from, against every frame's share (a cache or chunk-boundary effect would
gather on the chunk's first latent frame).

    python docs/eval/second_blob.py WEIGHTS_DIR [--scenes 8] [--seconds 60] [--steps 4]

Distances and speeds are pixels of the 128x128 frame; runs are in seconds (16 video frames each)."""

import argparse

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.world.evaluate import (PHANTOM_AREA, EvalConfig, has_colour, regions, run_eval, stream_frames,
                                     text_only_clips)
from streamer.world.scenes import World


def blobs(frame: np.ndarray, rgb: tuple[int, int, int]) -> list[tuple[float, float, float]]:
    """(area px, x, y) of the sprite-sized regions of a colour in a frame (uint8 [H, W, 3]), largest first."""
    labels, areas = regions(has_colour(frame, rgb))
    out = []
    for k in np.nonzero(areas >= PHANTOM_AREA)[0]:
        yy, xx = np.nonzero(labels == k + 1)
        out.append((float(areas[k]), xx.mean(), yy.mean()))
    return sorted(out, reverse=True)


def runs_of(frames_idx: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the runs of consecutive frame indices (int [N], increasing)."""
    if not len(frames_idx):
        return []
    cut = np.nonzero(np.diff(frames_idx) != 1)[0] + 1
    return [(int(seg[0]), len(seg)) for seg in np.split(frames_idx, cut)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps (evenly spaced from 1000, as `--steps` of "
                    "`streamer eval`; default Self-Forcing's 4)")
    args = ap.parse_args()
    pipe = Pipeline.load_default(args.weights, device=torch.device("cpu"), dtype=torch.bfloat16)
    torch.set_num_threads(1)
    d = pipe.stream_defaults or {}
    policy = d.get("policy", "window")
    cfg = EvalConfig(seconds=args.seconds, policies=(policy,), scenes=args.scenes, reference=False,
                     policy_args={policy: dict(d.get("policy_args", {}))}, sets=("text",), steps=args.steps)
    keep: dict = {}
    summary = run_eval(pipe, cfg, progress=False, keep_frames=keep)["policies"][policy]["text_only"]["summary"]
    print(f"{policy}, {args.steps} steps: found {summary['found_rate']:.3f}, second blob "
          f"{summary['second_blob_rate']:.3f}\n")
    clips = text_only_clips(World(), args.scenes, stream_frames(args.seconds, pipe.fps))
    fps = pipe.fps
    every = {"to_main": [], "to_start": [], "speed": [], "main_speed": [], "run_s": [], "onset_to_main": []}
    chunk = pipe.stream_config().chunk_frames  # the eval's chunk: the default one
    at, seen = [], []  # video frame indices: with a second blob, and all
    print("| prompt | frames with a second blob | to the sprite (px) | to the start (px) | speed / sprite's (px/frame) "
          "| runs | median run (s) |")
    print("|---|---|---|---|---|---|---|")
    for (_, _, i), frames in sorted(keep.items()):
        clip = clips[i]
        for rgb in {sp.rgb for sp in clip.scene.sprites}:
            named = sum(sp.rgb == rgb for sp in clip.scene.sprites)
            first = [b[0] for t in range(int(fps)) if (b := blobs(frames[t], rgb))]
            start = np.array(first[0][1:]) if first else np.array([np.nan, np.nan])
            rows = []  # frame, extra x, y, main x, y
            for t, frame in enumerate(frames):
                b = blobs(frame, rgb)
                if len(b) > named:
                    rows.append((t, b[named][1], b[named][2], b[0][1], b[0][2]))
            rows = np.array(rows).reshape(-1, 5)
            at.extend(rows[:, 0].astype(int))
            seen.extend(range(len(frames)))
            extra, main = rows[:, 1:3], rows[:, 3:5]
            to_main = np.linalg.norm(extra - main, axis=1)
            to_start = np.linalg.norm(extra - start, axis=1)
            step = np.nonzero(np.diff(rows[:, 0]) == 1)[0]  # consecutive frames: speeds
            speed = np.linalg.norm(np.diff(extra, axis=0)[step], axis=1)
            main_speed = np.linalg.norm(np.diff(main, axis=0)[step], axis=1)
            runs = runs_of(rows[:, 0].astype(int))
            onset = [to_main[np.searchsorted(rows[:, 0], s)] for s, _ in runs]
            for k, v in (("to_main", to_main), ("to_start", to_start), ("speed", speed), ("main_speed", main_speed),
                         ("run_s", [n / fps for _, n in runs]), ("onset_to_main", onset)):
                every[k].extend(v)
            med = lambda v: f"{np.median(v):.1f}" if len(v) else "-"  # noqa: E731
            print(f"| {clip.prompt} | {len(rows)} / {len(frames)} | {med(to_main)} | {med(to_start)} "
                  f"| {med(speed)} / {med(main_speed)} | {len(runs)} | {med([n / fps for _, n in runs])} |")
    e = {k: np.asarray(v, float) for k, v in every.items()}
    print(f"\nall prompts: {len(e['to_main'])} frames with a second blob, in {len(e['run_s'])} runs; medians: "
          f"{np.median(e['to_main']):.1f} px from the sprite ({np.median(e['onset_to_main']):.1f} px as a run "
          f"begins), {np.median(e['to_start']):.1f} px from the sprite's start ({np.mean(e['to_start'] < 12):.0%} "
          f"within 12 px), speed {np.median(e['speed']):.2f} px/frame (the sprite's {np.median(e['main_speed']):.2f}), "
          f"run {np.median(e['run_s']):.2f} s (mean {e['run_s'].mean():.2f} s, longest {e['run_s'].max():.1f} s)")
    print(f"\n{rhythm(np.asarray(at), np.asarray(seen), chunk)}")


def rhythm(at: np.ndarray, seen: np.ndarray, chunk: int) -> str:
    """Where frames with a second blob (video frame indices, int [N]) fall in the stream's rhythm,
    against all frames (int [M]): their share by latent frame within its chunk (chunk latent frames
    each) and by video frame within its latent frame (the causal VAE: frame 0 alone, then 4 each)."""
    def place(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        latent = np.where(t == 0, 0, 1 + (t - 1) // 4)
        return latent % chunk, np.where(t == 0, 0, (t - 1) % 4)

    def shares(x: np.ndarray, n: int) -> str:
        return " / ".join(f"{np.mean(x == k):.0%}" for k in range(n)) if len(x) else "-"

    (ca, sa), (cs, ss) = place(at), place(seen)
    return (f"latent frame within its chunk (0..{chunk - 1}): second blob {shares(ca, chunk)}, all frames "
            f"{shares(cs, chunk)}; video frame within its latent frame (0..3): second blob {shares(sa, 4)}, "
            f"all frames {shares(ss, 4)}")


if __name__ == "__main__":
    main()
