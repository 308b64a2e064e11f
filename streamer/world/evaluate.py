"""`streamer eval`: long streams from held-out scenes, scored against the world's ground truth.

For each cache policy, each held-out scene (seeds the training never drew: training seeds come
from a generator, these are fixed large numbers) is streamed for `--seconds` with its prompt and
its ground-truth trajectory as the track condition. Every frame is scored:

- trajectory error: distance (px) between the sprite's colour centroid and the requested point,
  on frames where the sprite's centre is at least one radius inside the frame (a sprite cut by
  the border has a biased centroid); `missing` counts frames where the colour is not found;
- identity drift: RGB distance of the sprite's mean colour and relative change of its pixel area,
  both against its first detection;
- background stability: mean absolute change (0-255) of pixels far from every sprite, against
  the first frame;
- motion kept: achieved / requested displacement over 4-frame windows in which the request moves
  (catches the motion stagnation of long autoregressive rollouts).

Each metric is a per-second curve and a summary; results go to JSON, a markdown table and PNG plots.
A reference row runs the ground-truth frames through the autoencoder only: the floor the DiT can reach.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from streamer import checks
from streamer.errors import InputError
from streamer.world.scenes import Clip, World, colour_centroid

HELD_OUT_SEEDS = (900_001, 900_002, 900_003, 900_004, 900_005, 900_006, 900_007, 900_008)
MOTION_WINDOW = 4  # frames over which achieved and requested displacement are compared


@dataclass
class EvalConfig:
    seconds: float = 60.0
    policies: tuple[str, ...] = ("window",)
    scenes: int = 2
    steps: int = 4
    seed: int = 0
    reference: bool = True
    policy_args: dict[str, dict] = field(default_factory=dict)


@dataclass
class FrameScores:
    """Per-frame arrays [T] (NaN where undefined), summed over sprites where per-sprite."""

    err: np.ndarray
    missing: np.ndarray
    colour_drift: np.ndarray
    area_drift: np.ndarray
    bg_change: np.ndarray
    achieved: np.ndarray
    requested: np.ndarray


def score_frames(frames: np.ndarray, clip: Clip) -> FrameScores:
    """frames uint8 [T, H, W, 3] generated for `clip`'s prompt and trajectory."""
    traj, sprites = clip.trajectory, clip.scene.sprites
    t_len = min(len(frames), traj.num_frames)
    h, w = frames.shape[1:3]
    nan = lambda: np.full((t_len, len(sprites)), np.nan)  # noqa: E731
    err, colour_d, area_d, miss = nan(), nan(), nan(), nan()
    cents = np.full((t_len, len(sprites), 2), np.nan)
    first: list[tuple[np.ndarray, int] | None] = [None] * len(sprites)
    yy, xx = np.mgrid[0:h, 0:w]
    bg_change = np.full(t_len, np.nan)
    ref = frames[0].astype(np.float32)
    for t in range(t_len):
        frame = frames[t]
        far = np.ones((h, w), bool)
        for n, sprite in enumerate(sprites):
            x, y = traj.tracks[t, n]
            far &= (xx - x) ** 2 + (yy - y) ** 2 > (sprite.radius * 2.2) ** 2
            if not traj.visible[t, n] or not (sprite.radius <= x <= w - sprite.radius and sprite.radius <= y <= h - sprite.radius):
                continue
            c = colour_centroid(frame, sprite.rgb)
            if c is None:
                miss[t, n] = 1.0
                continue
            miss[t, n] = 0.0
            cents[t, n] = c
            err[t, n] = math.hypot(c[0] - x, c[1] - y)
            d = np.linalg.norm(frame.astype(np.float32) - np.asarray(sprite.rgb, np.float32), axis=-1) < 70.0
            mean_rgb, area = frame[d].mean(0), int(d.sum())
            if first[n] is None:
                first[n] = (mean_rgb, area)
            colour_d[t, n] = float(np.linalg.norm(mean_rgb - first[n][0]))
            area_d[t, n] = abs(area / max(first[n][1], 1) - 1.0)
        if t == 0:
            ref_far = far
        m = far & ref_far
        if m.sum() > 50:
            bg_change[t] = float(np.abs(frame.astype(np.float32) - ref)[m].mean())
    achieved, requested = np.full(t_len, np.nan), np.full(t_len, np.nan)
    k = MOTION_WINDOW
    for t in range(k, t_len):
        a_sum = r_sum = 0.0
        for n in range(len(sprites)):
            req = float(np.linalg.norm(traj.tracks[t, n] - traj.tracks[t - k, n]))
            got = cents[t, n] - cents[t - k, n]
            if req / k > 0.5 and np.isfinite(got).all():
                a_sum += float(np.linalg.norm(got))
                r_sum += req
        if r_sum > 0:
            achieved[t], requested[t] = a_sum, r_sum
    with np.errstate(all="ignore"):
        return FrameScores(
            err=_nanmean_rows(err), missing=_nanmean_rows(miss), colour_drift=_nanmean_rows(colour_d),
            area_drift=_nanmean_rows(area_d), bg_change=bg_change, achieved=achieved, requested=requested,
        )


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[0], np.nan)
    ok = ~np.isnan(a).all(1)
    out[ok] = np.nanmean(a[ok], 1)
    return out


def summarize(scores: list[FrameScores], fps: float) -> dict:
    """Per-second curves and scalar summaries over several streams."""
    cat = {f: np.concatenate([getattr(s, f) for s in scores]) for f in FrameScores.__dataclass_fields__}
    n_sec = max(1, int(max(len(s.err) for s in scores) // fps))
    curves: dict[str, list] = {k: [] for k in ("err", "missing", "colour_drift", "area_drift", "bg_change", "motion_kept")}
    for sec in range(n_sec):
        sl = slice(int(sec * fps), int((sec + 1) * fps))
        with np.errstate(all="ignore"), _quiet():
            for k in ("err", "missing", "colour_drift", "area_drift", "bg_change"):
                v = np.concatenate([getattr(s, k)[sl] for s in scores])
                curves[k].append(_f(np.nanmean(v)) if np.isfinite(v).any() else None)
            a = np.concatenate([s.achieved[sl] for s in scores])
            r = np.concatenate([s.requested[sl] for s in scores])
            curves["motion_kept"].append(_f(np.nansum(a) / np.nansum(r)) if np.nansum(r) > 0 else None)
    with np.errstate(all="ignore"), _quiet():
        summary = {
            "trajectory_error_px": _f(np.nanmean(cat["err"])),
            "trajectory_error_px_last10s": _f(np.nanmean(np.concatenate([s.err[-int(10 * fps):] for s in scores]))),
            "missing_rate": _f(np.nanmean(cat["missing"])),
            "colour_drift_rgb": _f(np.nanmean(cat["colour_drift"])),
            "area_drift": _f(np.nanmean(cat["area_drift"])),
            "background_change": _f(np.nanmean(cat["bg_change"])),
            "motion_kept": _f(np.nansum(cat["achieved"]) / np.nansum(cat["requested"])) if np.nansum(cat["requested"]) else None,
        }
    return {"summary": summary, "curves": curves}


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def _f(x) -> float | None:
    x = float(x)
    return round(x, 4) if math.isfinite(x) else None


def stream_clip(pipe, clip: Clip, policy: str, policy_args: dict, steps: int, seed: int) -> tuple[np.ndarray, dict]:
    """Stream the clip's prompt + trajectory; frames [T, H, W, 3] and timing."""
    from streamer.sampler import SamplerConfig, sampler_for_steps
    from streamer.session import Session, StreamConfig

    traj = clip.trajectory
    w, h = traj.width, traj.height
    sampler = SamplerConfig() if steps == 4 else sampler_for_steps(steps)
    cfg = StreamConfig(width=w, height=h, sampler=sampler, policy=policy, policy_args=policy_args, seed=seed)
    session = Session(pipe, clip.prompt, cfg)
    session.track_condition = pipe.track_condition(traj, w, h)
    out, dit, dec = [], 0.0, 0.0
    n = 0
    while n < traj.num_frames:
        chunk = session.step()
        out.append(chunk.frames)
        n += len(chunk.frames)
        dit += chunk.dit_seconds
        dec += chunk.decode_seconds
    frames = np.concatenate(out)[: traj.num_frames]
    return frames, {"dit_s": dit, "decode_s": dec, "fps": len(frames) / max(dit + dec, 1e-9)}


def reference_frames(pipe, clip: Clip) -> np.ndarray:
    """Ground-truth frames through the autoencoder only (what a perfect DiT would give)."""
    from streamer.models.vae import video_to_uint8

    vae = pipe.decoder.vae
    video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    n = (video.shape[2] - 1) // 4 * 4 + 1
    with torch.inference_mode():
        pipe.decoder.reset()
        lat = vae.encode(video[:, :, :n].to(pipe.decoder.device, pipe.decoder.dtype))
        frames = [video_to_uint8(pipe.decoder.decode(lat[:, :, i : i + 12]))[0] for i in range(0, lat.shape[2], 12)]
        pipe.decoder.reset()
    return np.concatenate(frames)


def run_eval(pipe, cfg: EvalConfig, world: World | None = None, progress: bool = True) -> dict:
    world = world or World()
    n_frames = 1 + 4 * math.ceil((cfg.seconds * pipe.fps - 1) / 4)
    clips = [world.clip(s, n_frames) for s in HELD_OUT_SEEDS[: cfg.scenes]]
    results: dict = {"config": asdict(cfg), "model": pipe.description, "fps": pipe.fps,
                     "size": list(pipe.native_size), "policies": {}}
    rows = ([("reference (autoencoder)", None)] if cfg.reference and hasattr(pipe.decoder, "vae")
            and hasattr(pipe.decoder.vae, "encode") else []) + [(p, p) for p in cfg.policies]
    for name, policy in rows:
        scores, timing = [], []
        for clip in tqdm(clips, desc=name, disable=not progress):
            if policy is None:
                frames = reference_frames(pipe, clip)
            else:
                args = cfg.policy_args.get(policy, {})
                frames, t = stream_clip(pipe, clip, policy, args, cfg.steps, cfg.seed)
                timing.append(t)
            scores.append(score_frames(frames, clip))
        res = summarize(scores, pipe.fps)
        if timing:
            res["summary"]["stream_fps"] = _f(np.mean([t["fps"] for t in timing]))
        res["prompts"] = [c.prompt for c in clips]
        # per scene too: one- and multi-sprite scenes fail differently, and the mean hides which
        res["scenes"] = [summarize([sc], pipe.fps)["summary"] for sc in scores]
        results["policies"][name] = res
    return results


def markdown_table(results: dict) -> str:
    cols = [("trajectory_error_px", "traj err px"), ("trajectory_error_px_last10s", "err last 10 s"),
            ("missing_rate", "missing"), ("colour_drift_rgb", "colour drift"), ("area_drift", "area drift"),
            ("background_change", "bg change"), ("motion_kept", "motion kept"), ("stream_fps", "FPS")]
    lines = ["| policy | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in results["policies"].items():
        s = res["summary"]
        cells = ["-" if s.get(k) is None else f"{s[k]:.3g}" for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scene_table(results: dict) -> str:
    """Trajectory error / missing rate per scene: a one-sprite and a two-sprite scene fail differently."""
    policies = {n: r for n, r in results["policies"].items() if r.get("scenes")}
    if not policies:
        return ""
    prompts = next(iter(policies.values()))["prompts"]
    head = "| policy | " + " | ".join(f"{p}: err px / missing" for p in prompts) + " |"
    lines = [head, "|---" * (len(prompts) + 1) + "|"]
    for name, res in policies.items():
        cells = []
        for sc in res["scenes"]:
            err, miss = sc.get("trajectory_error_px"), sc.get("missing_rate")
            cells.append(("-" if err is None else f"{err:.3g}") + " / " + ("-" if miss is None else f"{miss:.2f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(results: dict, path: Path) -> None:
    cfg = results["config"]
    text = (f"# streamer eval ({cfg['seconds']:g} s streams, {cfg['scenes']} scenes, {cfg['steps']} steps)\n\n"
            f"{results['model']}\n\n{markdown_table(results)}")
    if cfg["scenes"] > 1 and (scenes := scene_table(results)):
        text += f"\nPer scene:\n\n{scenes}"
    path.write_text(text + "\n![curves](eval.png)\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("err", "trajectory error (px)"), ("motion_kept", "motion kept (achieved / requested)"),
            ("colour_drift", "identity: colour drift (RGB)"), ("area_drift", "identity: area drift"),
            ("bg_change", "background change (0-255)"), ("missing", "sprite missing rate")]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, (k, title) in zip(axes.flat, keys):
        for name, res in results["policies"].items():
            y = np.array([np.nan if v is None else v for v in res["curves"][k]], float)
            ax.plot(np.arange(len(y)), y, label=name, lw=1.2, ls="--" if name.startswith("reference") else "-")
        ax.set_title(title)
        ax.set_xlabel("stream time (s)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"streamer eval: {results['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def measure_speed(pipe, seconds: float = 10.0, steps: int = 4, policy: str = "window",
                  policy_args: dict | None = None, seed: int = 0) -> dict:
    """End-to-end speed of one stream (DiT + decode, trajectory channels included): the time from
    `Session(...)` (prompt encoding included) to the first frames, and the steady frames per second."""
    from streamer.sampler import SamplerConfig, sampler_for_steps
    from streamer.session import Session, StreamConfig

    clip = World().clip(HELD_OUT_SEEDS[0], 1 + 4 * math.ceil((seconds * pipe.fps - 1) / 4))
    w, h = pipe.native_size
    sampler = SamplerConfig() if steps == 4 else sampler_for_steps(steps)
    cfg = StreamConfig(width=w, height=h, sampler=sampler, policy=policy, policy_args=policy_args or {}, seed=seed)
    t0 = time.perf_counter()
    session = Session(pipe, clip.prompt + f" #{seed}", cfg)  # a new prompt: the text encoder runs
    session.track_condition = pipe.track_condition(clip.trajectory, w, h)
    first = session.step()
    first_s = time.perf_counter() - t0
    n, dit, dec = 0, 0.0, 0.0
    t1 = time.perf_counter()
    while n < clip.trajectory.num_frames:
        c = session.step()
        n, dit, dec = n + len(c.frames), dit + c.dit_seconds, dec + c.decode_seconds
    wall = time.perf_counter() - t1
    return {"first_frame_s": round(first_s, 3), "first_chunk_frames": len(first.frames), "frames": n,
            "fps": round(n / wall, 1), "dit_ms_per_chunk": round(1e3 * dit * 12 / n, 1),
            "decode_ms_per_chunk": round(1e3 * dec * 12 / n, 1), "steps": steps, "policy": policy,
            "threads": torch.get_num_threads()}


def cmd_eval(args) -> int:
    from streamer.pipeline import Pipeline, default_device
    from streamer.policies import POLICIES, parse_policy_args

    torch.set_num_threads(args.threads)
    if args.weights is None:
        pipe = Pipeline.load(device=args.device)
    else:  # a `streamer train` run folder: score a checkpoint before (or instead of) shipping it
        pipe = Pipeline.load_default(args.weights, device=args.device or default_device(), dtype=torch.bfloat16)
    if args.speed:
        defaults = pipe.stream_defaults or {}
        res = measure_speed(pipe, args.seconds if args.seconds != 60.0 else 10.0, args.steps,
                            defaults.get("policy", "window"), defaults.get("policy_args"))
        print(json.dumps(res))
        return 0
    if not pipe.model.config.track_channels:
        raise InputError("streamer eval needs a model with trajectory channels (the default world model)")
    policies = tuple(POLICIES) if args.policies == "all" else tuple(p.strip() for p in args.policies.split(","))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise InputError(f"--policies: unknown policies {unknown}; known: {', '.join(POLICIES)}")
    policy_args: dict[str, dict] = {}
    defaults = pipe.stream_defaults or {}
    if defaults.get("policy") in policies:  # the window the model was trained for
        policy_args[defaults["policy"]] = dict(defaults.get("policy_args", {}))
    for item in args.policy_arg:  # policy:key=value
        if ":" not in item:
            raise InputError(f"--policy-arg {item!r} must look like policy:key=value")
        pol, kv = item.split(":", 1)
        policy_args.setdefault(pol, {}).update(parse_policy_args([kv]))
    cfg = EvalConfig(seconds=args.seconds, policies=policies, scenes=args.scenes, steps=args.steps, seed=args.seed,
                     reference=not args.no_reference, policy_args=policy_args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = run_eval(pipe, cfg, progress=not args.quiet)
    results["wall_seconds"] = round(time.time() - t0, 1)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(results)
    write_markdown(results, out / "eval.md")
    plot(results, out / "eval.png")
    print(table)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'eval.png'}")
    return 0


def _policy_list(text: str) -> str:
    """argparse type of --policies: 'all' or comma-separated known policy names (refused at parse time)."""
    import argparse

    from streamer.policies import POLICIES

    names = [p.strip() for p in text.split(",")]
    unknown = [p for p in names if p not in POLICIES]
    if text != "all" and unknown:
        raise argparse.ArgumentTypeError(f"unknown policies {unknown}; known: {', '.join(POLICIES)}, or all")
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score long streams of the default world model against ground truth",
                              description="Stream held-out scenes of the synthetic world and score trajectory error, "
                                          "identity drift, background stability and motion kept, per cache policy.")
    p.add_argument("--seconds", type=checks.positive_seconds, default=60.0, help="stream length (default 60)")
    p.add_argument("--policies", type=_policy_list, default="window", help="comma-separated cache policies, or 'all'")
    p.add_argument("--policy-arg", action="append", default=[], metavar="POLICY:K=V", help="policy knob, repeatable")
    p.add_argument("--scenes", type=checks.int_in(1, len(HELD_OUT_SEEDS)), default=2, help=f"held-out scenes per policy (at most {len(HELD_OUT_SEEDS)})")
    p.add_argument("--steps", type=checks.int_in(1, checks.STEPS_MAX), default=4, help="denoising steps")
    p.add_argument("--seed", type=checks.int_in(0, checks.SEED_MAX), default=0)
    p.add_argument("--out", default="runs/eval", help="folder for eval.json, eval.md, eval.png")
    p.add_argument("--no-reference", action="store_true", help="skip the autoencoder-only reference row")
    p.add_argument("--weights", metavar="DIR",
                   help="world-model folder with dit.safetensors + vae.safetensors, e.g. a `streamer train --out` "
                        "run (default: the shipped weights)")
    p.add_argument("--device", type=checks.device, help="cuda / cpu")
    p.add_argument("--threads", type=checks.int_in(1, 1024), default=2)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--speed", action="store_true",
                   help="only measure end-to-end FPS and first-frame latency (a 10 s stream unless --seconds)")
    p.set_defaults(func=cmd_eval)
