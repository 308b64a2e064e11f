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

- border artefacts: the same change in an 8-px band along the edges against the interior;
- smear: colour left on a sprite's vacated path (where it was >= 4 frames ago, now far from every
  sprite): how far those pixels moved from the first frame's background toward the sprite's colour
  (0: background as it was, 1: the sprite's colour);
- identity (scenes of several sprites): the centroid of every sprite colour's largest connected
  region within its radius of its own track and nearest to it (a swap or a mix of colours fails).
  With several sprites a pixel counts only for the sprite colour nearest to it (sprite_masks), so a
  reddish orange is not both, and only the largest region counts (as for a prompt alone,
  largest_blob), so the rim of another colour that the autoencoder draws round a blurred sprite (a
  red square on sand gets an orange one) is not that colour's sprite.

Two more scene sets: "text" streams a one-sprite prompt alone (no tracks) and asks whether its
sprite is there with the named colour (a compact blob of 0.35-3x its drawn area: is_sprite_blob)
and shape (best IoU among the world's drawn shapes), from when, and how often its colour also
forms a second blob (of PHANTOM_AREA px, as a phantom: one sprite named, two drawn); "two" starts two-sprite scenes from their true
first frame (an image start: the clean latent frame 0 in the cache) with a track on each.
"drag" is the browser's first use: the text set's
scene streamed as a prompt alone for DRAG_AT_S, then a stroke drawn from where its sprite is (as a
user sees it: `grab_point`) for the rest of the stream; the frames after the stroke begins are
scored as a track scene (error, missing, phantom: a sprite left behind or a new blob spawned where
the old one stays), with the sprite's found rate before the stroke and whether it was there to grab.
An opt-in set, "colours", streams "a <colour> circle on a <background> background" alone for every
colour on every background it does not clash with (38 prompts, COLOUR_SECONDS each): which colours
a prompt alone can make, where the four text-only scenes sample only four pairs.

Each metric is a per-second curve and a summary; results go to JSON, a markdown table and PNG plots.
A reference row runs the ground-truth frames through the autoencoder only: the floor the DiT can reach.
"""

from __future__ import annotations

import json
import math
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from streamer import checks
from streamer.errors import InputError
from streamer.world.scenes import Clip, World

HELD_OUT_SEEDS = (900_001, 900_002, 900_003, 900_004, 900_005, 900_006, 900_007, 900_008)
MOTION_WINDOW = 4  # frames over which achieved and requested displacement are compared
BORDER = 8         # px: the band along the frame's edges scored for border artefacts
DEFAULT_OUT = "runs/eval"  # where `streamer eval` writes when --out is not given
EVAL_SECONDS_MAX = 3600.0  # s: a stream and its ground truth are held whole (an hour at 128x128: ~2.8 GB each)
SMEAR_LAG = 4      # frames: a path pixel counts as vacated this long after the sprite left it
COLOUR_TOL = 70.0  # RGB distance within which a pixel has a sprite's colour (as colour_centroid)
PHANTOM_AREA = 0.35 * math.pi * 7.0**2  # px: a third of the smallest sprite (radius 7 px at 128 px)
MIN_PIXELS = 6     # fewer pixels of a sprite's colour than this: the sprite is missing (as colour_centroid)
# Held-out scenes of each set: fixed large seeds the training's generator never drew. The text-only
# and two-sprite sets take, from these ranges, the first seeds whose scene fits the set.
TEXT_SEED_BASE, TWO_SEED_BASE = 910_001, 920_001
# the text and two-sprite sets draw their scenes from a base seed, so they can take more than the
# track set's fixed eight: one hard scene moves a four-scene mean by several points
MAX_DRAWN_SCENES = 32


# prompt + tracks from noise; prompt alone; two sprites from their true first frame; a prompt alone, then a stroke
SETS = ("track", "text", "two", "drag")
ALL_SETS = SETS + ("colours",)   # + every colour x background as a prompt alone (opt-in: 38 streams)
# the colours set's streams: long enough for the first chunks' colour drift (yellow turning orange,
# then red, within ~2 s on v5), short enough that 38 of them take ~2 min on a 2-core CPU
COLOUR_SECONDS = 4.0
# the drag set's stroke begins at the first chunk boundary this far into the stream (at most half of
# it): long enough for a prompt alone to have made its sprite (found within ~1 s on v13), about when
# a user who typed a prompt would draw on it
DRAG_AT_S = 4.0


@dataclass
class EvalConfig:
    seconds: float = 60.0
    policies: tuple[str, ...] = ("window",)
    scenes: int = 2
    steps: int | None = None  # denoising steps; None: the model's own (`Pipeline.stream_config`)
    seed: int = 0
    reference: bool = True
    policy_args: dict[str, dict] = field(default_factory=dict)
    sets: tuple[str, ...] = SETS
    guidance: float | None = None  # text CFG scale; None: the model's own (`Pipeline.stream_config`)
    hidden_chunks: int | None = None  # chunks made before the first shown; None: the model's own
    drift_anchor: bool | None = None  # `streamer.anchor`; None: the model's own


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
    border_change: np.ndarray = None    # mean |frame - frame 0| (0-255) in the border band, far from sprites
    interior_change: np.ndarray = None  # the same inside the band: a border artefact shows as border > interior
    smear: np.ndarray = None            # colour left on the vacated path, 0 (none) to 1 (the sprite's colour)
    identity: np.ndarray = None         # 1 when each sprite's colour sits on its own track (two-sprite scenes)
    phantom: np.ndarray = None          # 1 when a sprite-coloured blob sits far from every track (`phantom_frames`)

    def __post_init__(self) -> None:
        for f in ("border_change", "interior_change", "smear", "identity", "phantom"):
            if getattr(self, f) is None:
                setattr(self, f, np.full(len(self.err), np.nan))


def border_band(h: int, w: int) -> np.ndarray:
    """bool [h, w]: the `BORDER`-px band along a frame's edges, where border artefacts are scored."""
    band = np.zeros((h, w), bool)
    band[:BORDER], band[-BORDER:], band[:, :BORDER], band[:, -BORDER:] = True, True, True, True
    return band


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
    border_c, interior_c, smear, ident = (np.full(t_len, np.nan) for _ in range(4))
    band = border_band(h, w)
    visited = np.zeros((len(sprites), h, w), bool)  # each sprite's path up to SMEAR_LAG frames ago
    ref = frames[0].astype(np.float32)
    # smear is read against the first frame's background: not where a sprite stood in it
    foot0 = np.zeros((h, w), bool)
    for n, sprite in enumerate(sprites):
        x0, y0 = traj.tracks[0, n]
        foot0 |= (xx - x0) ** 2 + (yy - y0) ** 2 < (sprite.radius * 1.6) ** 2
    ref_dist = [np.linalg.norm(ref - np.asarray(sp.rgb, np.float32), axis=-1) for sp in sprites]
    for t in range(t_len):
        frame = frames[t]
        masks = sprite_masks(frame, sprites)
        far = np.ones((h, w), bool)
        for n, sprite in enumerate(sprites):
            x, y = traj.tracks[t, n]
            far &= (xx - x) ** 2 + (yy - y) ** 2 > (sprite.radius * 2.2) ** 2
        if t >= SMEAR_LAG:
            for n, sprite in enumerate(sprites):
                px, py = traj.tracks[t - SMEAR_LAG, n]
                visited[n] |= (xx - px) ** 2 + (yy - py) ** 2 < (sprite.radius * 0.8) ** 2
            fr = []
            for n, sprite in enumerate(sprites):
                vac = visited[n] & far & ~foot0 & (ref_dist[n] > 40.0)
                if vac.sum() >= 20:
                    # how far each vacated pixel moved from the first frame's background toward the
                    # sprite's colour: 0 = background as it was, 1 = the sprite's colour left behind
                    d = np.linalg.norm(frame.astype(np.float32) - np.asarray(sprite.rgb, np.float32), axis=-1)
                    fr.append(float(np.clip((ref_dist[n][vac] - d[vac]) / ref_dist[n][vac], 0, 1).mean()))
            smear[t] = np.mean(fr) if fr else np.nan
        for n, sprite in enumerate(sprites):
            x, y = traj.tracks[t, n]
            if not traj.visible[t, n] or not (sprite.radius <= x <= w - sprite.radius and sprite.radius <= y <= h - sprite.radius):
                continue
            d = masks[n]
            if d.sum() < MIN_PIXELS:
                miss[t, n] = 1.0
                continue
            miss[t, n] = 0.0
            cents[t, n] = c = (float(xx[d].mean()), float(yy[d].mean()))
            err[t, n] = math.hypot(c[0] - x, c[1] - y)
            mean_rgb, area = frame[d].mean(0), int(d.sum())
            if first[n] is None:
                first[n] = (mean_rgb, area)
            colour_d[t, n] = float(np.linalg.norm(mean_rgb - first[n][0]))
            area_d[t, n] = abs(area / max(first[n][1], 1) - 1.0)
        if t == 0:
            ref_far = far
        m = far & ref_far
        if m.sum() > 50:
            diff = np.abs(frame.astype(np.float32) - ref).mean(-1)
            bg_change[t] = float(diff[m].mean())
            if (m & band).sum() > 50 and (m & ~band).sum() > 50:
                border_c[t], interior_c[t] = float(diff[m & band].mean()), float(diff[m & ~band].mean())
        if len(sprites) > 1:
            blobs = np.full((len(sprites), 2), np.nan)
            for n in np.nonzero(miss[t] == 0.0)[0]:
                blob = largest_region(masks[n])
                blobs[n] = (float(xx[blob].mean()), float(yy[blob].mean()))
            ident[t] = identity_kept(blobs, traj.tracks[t], [sp.radius for sp in sprites], ok=~np.isnan(miss[t]))
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
            border_change=border_c, interior_change=interior_c, smear=smear, identity=ident,
            phantom=phantom_frames(frames[:t_len], clip),
        )


def phantom_frames(frames: np.ndarray, clip: Clip) -> np.ndarray:
    """float [T]: 1 where a frame (uint8 [T, H, W, 3]) holds a phantom, else 0: a connected blob of
    any world sprite colour that does not clash with the background (within COLOUR_TOL), of at
    least PHANTOM_AREA px, whose centre is farther than 2.2 radii of the scene's largest sprite from
    every track (in view or not): a sprite where the user put none, e.g. a tracked sprite that
    bounced back instead of leaving the frame. The truth and the autoencoder's round trip of the
    held-out scenes have none."""
    from streamer.world.scenes import CLASHES, COLOURS

    colours = [rgb for c, rgb in COLOURS.items() if (c, clip.scene.background) not in CLASHES]
    tracks = clip.trajectory.tracks
    reach = 2.2 * max(sp.radius for sp in clip.scene.sprites)
    out = np.zeros(len(frames))
    for t, frame in enumerate(frames):
        for rgb in colours:
            n, _, stats, cents = cv2.connectedComponentsWithStats(has_colour(frame, rgb).astype(np.uint8),
                                                                  connectivity=8)
            big = stats[1:, cv2.CC_STAT_AREA] >= PHANTOM_AREA
            if big.any() and (np.linalg.norm(cents[1:][big][:, None] - tracks[t][None], axis=-1).min(1) > reach).any():
                out[t] = 1.0
                break
    return out


def sprite_masks(frame: np.ndarray, sprites, tol: float = COLOUR_TOL) -> np.ndarray:
    """bool [N, H, W]: the pixels of each sprite's colour. A pixel within `tol` of several sprites'
    colours (red and orange are 104 apart, so a reddish orange is near both) counts only for the
    nearest, so one sprite's pixels never pull another's centroid. With one sprite: has_colour."""
    f = frame.astype(np.float32)
    d = np.stack([np.linalg.norm(f - np.asarray(sp.rgb, np.float32), axis=-1) for sp in sprites])
    return (d < tol) & (d <= d.min(0, keepdims=True))


def has_colour(frame: np.ndarray, rgb: tuple[int, int, int], tol: float = COLOUR_TOL) -> np.ndarray:
    """bool [H, W]: pixels within `tol` (RGB distance) of a colour."""
    return np.linalg.norm(frame.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1) < tol


def identity_kept(cents: np.ndarray, tracks: np.ndarray, radii: list[float], ok: np.ndarray) -> float:
    """1.0 when every scored sprite's centroid (cents [N, 2] px, NaN = not found; score_frames gives
    that of its colour's largest connected region) lies within its
    radius of its own track point and nearer to it than to any other track (no swap, no mix), else
    0.0; NaN when no sprite is scored this frame (ok [N] bool: sprite inside the frame)."""
    if not ok.any():
        return float("nan")
    for n in np.nonzero(ok)[0]:
        if not np.isfinite(cents[n]).all():
            return 0.0
        d = np.linalg.norm(tracks - cents[n], axis=1)
        if d[n] > radii[n] or d.argmin() != n:
            return 0.0
    return 1.0


# drawn area of each shape at radius 1 (as World.draw draws them)
UNIT_AREA = {"circle": math.pi, "square": 4 * 0.81, "diamond": 2 * 1.15**2, "triangle": 3 * math.sqrt(3) / 4 * 1.25**2}


def shape_of(mask: np.ndarray, shapes: tuple[str, ...] | None = None) -> tuple[str | None, float]:
    """The world shape whose drawing best overlaps a blob, and that overlap (IoU, 0..1): each shape
    is drawn at the blob's centroid with the radius that gives the blob's area. A compact sprite
    scores ~0.8 (the ground truth's 5th percentile is 0.77), a ragged blotch far less. (None, 0.0)
    for an empty mask. mask bool [H, W]."""
    from streamer.world.scenes import SHAPES, Sprite

    area = int(mask.sum())
    if area == 0:
        return None, 0.0
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    best, best_iou = None, -1.0
    for shape in shapes or SHAPES:
        img = np.zeros((*mask.shape, 3), np.uint8)
        World.draw(img, Sprite(shape, "white", math.sqrt(area / UNIT_AREA[shape])), cx, cy)
        tmpl = img[..., 0] > 127
        iou = (tmpl & mask).sum() / max((tmpl | mask).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, float(iou)
    return best, best_iou


def largest_blob(frame: np.ndarray, rgb: tuple[int, int, int], tol: float = COLOUR_TOL) -> np.ndarray:
    """bool [H, W]: the largest 8-connected region of a colour (a smear elsewhere is not the sprite)."""
    return largest_region(has_colour(frame, rgb, tol))


def regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8-connected regions of a mask (bool [H, W]): labels int [H, W] (0 outside the mask,
    k for region k) and areas int [K] (px of regions 1..K)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA]


def largest_region(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the largest 8-connected region of a mask (bool [H, W]); all False when empty."""
    return _largest(*regions(mask))


def _largest(labels: np.ndarray, areas: np.ndarray) -> np.ndarray:
    return labels == 1 + int(np.argmax(areas)) if len(areas) else np.zeros(labels.shape, bool)


@dataclass
class TextScores:
    """Per-frame arrays [T] of a text-only stream, averaged over the prompt's sprites."""

    found: np.ndarray     # 1 when the sprite's colour forms a sprite-like blob (is_sprite_blob)
    shape_ok: np.ndarray  # 1 when that blob's best-matching shape is the named one (NaN when not found)
    second: np.ndarray = None  # 1 when a named colour forms more blobs of PHANTOM_AREA px than the prompt names


# A blob counts as the sprite when its area is TEXT_MIN_AREA..TEXT_MAX_AREA of the sprite's drawn
# area and it is compact (IoU >= TEXT_MIN_IOU with the best-fitting world shape), so a smear or a
# ragged colour blotch of sprite size is not "found". Chosen so the autoencoder's own round trip of
# the true clips scores the same as with the area floor alone (old autoencoder 0.73 of sampled
# frames, the ae36 one 0.92; the ground truth 1.0 with IoU >= 0.77 and area <= 1.3x).
TEXT_MIN_AREA, TEXT_MAX_AREA, TEXT_MIN_IOU = 0.35, 3.0, 0.5


def is_sprite_blob(blob: np.ndarray, sprite) -> tuple[bool, str | None]:
    """(found, best shape) for a blob (bool [H, W]) of a sprite's colour: sprite-sized and compact."""
    drawn = UNIT_AREA[sprite.shape] * sprite.radius**2
    if not TEXT_MIN_AREA * drawn <= blob.sum() <= TEXT_MAX_AREA * drawn:
        return False, None
    shape, iou = shape_of(blob)
    return iou >= TEXT_MIN_IOU, shape


def score_text_only(frames: np.ndarray, clip: Clip) -> TextScores:
    """frames uint8 [T, H, W, 3] streamed from `clip`'s prompt alone (no tracks): is each named
    sprite there, with its colour and shape? Its position is free, so only presence is scored, and
    whether the colour also shows as a second sprite-sized blob (a prompt for one sprite made two)."""
    sprites = clip.scene.sprites
    found = np.zeros((len(frames), len(sprites)))
    shape_ok = np.full((len(frames), len(sprites)), np.nan)
    second = np.zeros(len(frames))
    named = {sp.rgb: sum(o.rgb == sp.rgb for o in sprites) for sp in sprites}  # colour -> sprites of it
    for t, frame in enumerate(frames):
        by_colour = {rgb: regions(has_colour(frame, rgb)) for rgb in named}  # once per colour
        for n, sp in enumerate(sprites):
            ok, shape = is_sprite_blob(_largest(*by_colour[sp.rgb]), sp)  # as largest_blob
            if ok:
                found[t, n] = 1.0
                shape_ok[t, n] = float(shape == sp.shape)
        # a second sprite of a named colour where the prompt names one ("found" still counts the
        # frame: the sprite is there); blobs as big as phantom_frames counts
        second[t] = float(any((areas >= PHANTOM_AREA).sum() > named[rgb] for rgb, (_, areas) in by_colour.items()))
    with np.errstate(all="ignore"):
        return TextScores(found=found.mean(1), shape_ok=_nanmean_rows(shape_ok), second=second)


def summarize_text(scores: list[TextScores], fps: float) -> dict:
    """Found rate, shape-right rate (of found frames), the first time each stream shows its sprites,
    and the share of frames with a second blob of a named colour (TextScores.second)."""
    n_sec = max(1, int(max(len(s.found) for s in scores) // fps))
    # per second: when a stream loses its sprite, and when it draws the colour twice
    curves: dict[str, list] = {"found": [], "shape_ok": [], "second": []}
    for sec in range(n_sec):
        sl = slice(int(sec * fps), int((sec + 1) * fps))
        with np.errstate(all="ignore"), _quiet():
            for k in curves:
                v = np.concatenate([getattr(s, k)[sl] for s in scores])
                curves[k].append(_f(np.nanmean(v)) if np.isfinite(v).any() else None)
    firsts = [(np.argmax(s.found >= 1.0) / fps) if (s.found >= 1.0).any() else None for s in scores]
    with np.errstate(all="ignore"), _quiet():
        summary = {
            "found_rate": _f(np.mean(np.concatenate([s.found for s in scores]))),
            "found_rate_after_1s": _f(np.mean(np.concatenate([s.found[int(fps):] for s in scores]))),
            "shape_right_rate": _f(np.nanmean(np.concatenate([s.shape_ok for s in scores]))),
            "first_found_s": None if any(f is None for f in firsts) else _f(max(firsts)),
            "second_blob_rate": _f(np.mean(np.concatenate([s.second for s in scores]))),
        }
    return {"summary": summary, "curves": curves}


def grab_point(frame: np.ndarray, sprite, fallback: np.ndarray) -> np.ndarray:
    """float [2] (x, y px): where a user starts a stroke on a prompt alone's sprite in `frame`
    (uint8 [H, W, 3]), the centroid of its colour's largest blob; `fallback` (the spawn point, where
    the world puts a prompt's sprite) when fewer than MIN_PIXELS have the colour."""
    blob = largest_blob(frame, sprite.rgb)
    if blob.sum() < MIN_PIXELS:
        return np.asarray(fallback, np.float32)
    ys, xs = np.nonzero(blob)
    return np.array([xs.mean(), ys.mean()], np.float32)


def drag_start_frame(pipe, seconds: float) -> int | None:
    """Video frame at which the drag set's stroke begins in a `seconds` stream: the first chunk
    boundary (frames shown so far, the causal VAE's frame rule) at or after DRAG_AT_S, or after half
    the stream if that is sooner; the last boundary before the stream's end if none is left after
    that; None when the stream is a single chunk."""
    chunk, rule = pipe.stream_config().chunk_frames, pipe.decoder.frames
    n_frames, target = stream_frames(seconds, pipe.fps), min(DRAG_AT_S, seconds / 2) * pipe.fps
    bounds = []
    latents = chunk
    while rule.video_frames(latents) < n_frames:
        bounds.append(rule.video_frames(latents))
        latents += chunk
    return next((b for b in bounds if b >= target), bounds[-1] if bounds else None)


def drag_trajectory(world: World, clip: Clip, start_frame: int, grab: np.ndarray, num_frames: int):
    """The stroke as a whole stream's Trajectory [num_frames, 1]: not visible before `start_frame`
    (no track channel: the prompt alone), then `World.drag_path` from `grab` (x, y px)."""
    from streamer.trajectory import Trajectory

    traj = clip.trajectory
    tracks = np.repeat(np.asarray(grab, np.float32)[None, None], num_frames, 0)
    tracks[start_frame:, 0] = world.drag_path(clip.scene.seed, grab, clip.scene.sprites[0].radius,
                                              num_frames - start_frame)
    visible = np.zeros((num_frames, 1), bool)
    visible[start_frame:] = True
    return Trajectory(tracks, visible, traj.fps, traj.width, traj.height)


@dataclass
class DragScores:
    """A drag-set stream: `before` (a prompt alone's scores up to the stroke) and `after` (the
    track scores from the stroke's first frame on, against the stroke)."""

    before: TextScores
    after: FrameScores

    @property
    def grabbed(self) -> bool:
        """The sprite was there to draw on: found (`is_sprite_blob`) in the last frame before the
        stroke, the frame `grab_point` reads."""
        return bool(self.before.found[-1] >= 1.0)


def score_drag(frames: np.ndarray, clip: Clip, stroke, start_frame: int) -> DragScores:
    """frames uint8 [T, H, W, 3] of a drag-set stream for `clip`, whose stroke (a Trajectory over
    the whole stream, `drag_trajectory`) begins at video frame `start_frame`."""
    from streamer.trajectory import Trajectory

    after = Trajectory(stroke.tracks[start_frame:], stroke.visible[start_frame:], stroke.fps, stroke.width,
                       stroke.height)
    tail = Clip(frames[start_frame:], after, clip.prompt, clip.scene, clip.background)
    return DragScores(score_text_only(frames[:start_frame], clip), score_frames(frames[start_frame:], tail))


def summarize_drag(scores: list[DragScores], fps: float) -> dict:
    """The track summary and curves of the frames after the stroke (curves: seconds after it
    begins), plus the found rate before it (`found_before_stroke`) and the share of streams whose
    sprite was there to grab (`grabbed`)."""
    part = summarize([s.after for s in scores], fps)
    part["summary"]["found_before_stroke"] = _f(np.mean(np.concatenate([s.before.found for s in scores])))
    part["summary"]["grabbed"] = _f(np.mean([s.grabbed for s in scores]))
    return part


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[0], np.nan)
    ok = ~np.isnan(a).all(1)
    out[ok] = np.nanmean(a[ok], 1)
    return out


def summarize(scores: list[FrameScores], fps: float) -> dict:
    """Per-second curves and scalar summaries over several streams."""
    cat = {f: np.concatenate([getattr(s, f) for s in scores]) for f in FrameScores.__dataclass_fields__}
    n_sec = max(1, int(max(len(s.err) for s in scores) // fps))
    per_frame = ("err", "missing", "colour_drift", "area_drift", "bg_change", "border_change", "interior_change",
                 "smear", "identity", "phantom")
    curves: dict[str, list] = {k: [] for k in (*per_frame, "motion_kept")}
    for sec in range(n_sec):
        sl = slice(int(sec * fps), int((sec + 1) * fps))
        with np.errstate(all="ignore"), _quiet():
            for k in per_frame:
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
            "border_change": _f(np.nanmean(cat["border_change"])),
            "interior_change": _f(np.nanmean(cat["interior_change"])),
            "smear": _f(np.nanmean(cat["smear"])),
            "identity_kept": _f(np.nanmean(cat["identity"])),
            "phantom_rate": _f(np.nanmean(cat["phantom"])),
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


def in_view(clip: Clip) -> np.ndarray:
    """bool [T, N]: each sprite visible and whole inside the frame (its radius from every edge)."""
    traj = clip.trajectory
    r = np.array([sp.radius for sp in clip.scene.sprites])
    x, y = traj.tracks[..., 0], traj.tracks[..., 1]
    return traj.visible & (x >= r) & (x <= traj.width - r) & (y >= r) & (y <= traj.height - r)


def text_only_clips(world: World, n: int, num_frames: int) -> list[Clip]:
    """The first `n` held-out one-sprite scenes from TEXT_SEED_BASE in the world's text-only layout
    (`World.clip(spawn=True)`: the sprite at the centre, bouncing, always whole in view, so the
    ground truth itself is found in every frame)."""
    out, seed = [], TEXT_SEED_BASE
    while len(out) < n:
        if len(world.scene(seed).sprites) == 1:
            clip = world.clip(seed, num_frames, spawn=True)
            if in_view(clip).all():
                out.append(clip)
        seed += 1
    return out


def stream_frames(seconds: float, fps: float) -> int:
    """Video frames of a stream of at least `seconds`: 1 + 4k, the causal VAE's frame rule."""
    return 1 + 4 * math.ceil((seconds * fps - 1) / 4)


def colour_clips(world: World, num_frames: int) -> list[Clip]:
    """"a <colour> circle on a <background> background" ("an orange ...") in the text-only layout (the middle radius,
    from the spawn point, bouncing), for every colour x background pair that does not clash
    (scenes.CLASHES), backgrounds in BACKGROUNDS' order and colours in COLOURS' order; the
    background texture is TEXT_SEED_BASE's for all."""
    from streamer.world.scenes import BACKGROUNDS, CLASHES, COLOURS, Scene, Sprite

    radius = sum(world.config.radius) / 2 * world.config.scale
    out = []
    for bg in BACKGROUNDS:
        for colour in COLOURS:
            if (colour, bg) in CLASHES:
                continue
            scene = Scene(bg, [Sprite("circle", colour, radius)], ["spawn"], TEXT_SEED_BASE)
            traj = world.trajectory(scene, num_frames)
            image = world.background(bg, TEXT_SEED_BASE)
            out.append(Clip(world.render(image, scene.sprites, traj), traj, scene.prompt(), scene, image))
    return out


def two_sprite_clips(world: World, n: int, num_frames: int) -> list[Clip]:
    """The first `n` held-out scenes from TWO_SEED_BASE with exactly two sprites, both whole in the
    first frame (an image start must show them)."""
    out, seed = [], TWO_SEED_BASE
    cfg = world.config
    while len(out) < n:
        scene = world.scene(seed)
        if len(scene.sprites) == 2:
            tr = world.trajectory(scene, 1).tracks[0]
            if all(sp.radius <= x <= cfg.width - sp.radius and sp.radius <= y <= cfg.height - sp.radius
                   for sp, (x, y) in zip(scene.sprites, tr)):
                out.append(world.clip(seed, num_frames))
        seed += 1
    return out


def encode_first_frame(pipe, clip: Clip) -> torch.Tensor:
    """The clip's true first frame as one clean latent frame [1, C, 1, h, w] (an image start)."""
    video = torch.from_numpy(clip.frames[:1]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.inference_mode():
        return pipe.decoder.vae.encode(video.to(pipe.decoder.device, pipe.decoder.dtype)).to(pipe.device, pipe.dtype)


def stream_clip(pipe, clip: Clip, policy: str, policy_args: dict, steps: int | None, seed: int,
                tracks: bool = True, image_start: bool = False, guidance: float | None = None,
                hidden_chunks: int | None = None, before_chunk=None,
                drift_anchor: bool | None = None) -> tuple[np.ndarray, dict]:
    """Stream the clip's prompt (+ its trajectory when `tracks`, from its true first frame when
    `image_start`; text guidance `guidance`, hidden chunks `hidden_chunks` and the drift anchor
    `drift_anchor`, None: the model's own); frames [T, H, W, 3] and timing.
    `before_chunk(session, n, shown)` runs before each step with the video frames made so far (n,
    and the chunks' frame arrays), so a control it sets lands at that chunk boundary."""

    from streamer.session import Session

    traj = clip.trajectory
    w, h = traj.width, traj.height
    cfg = pipe.stream_config(size=(w, h), policy=policy, policy_args=policy_args, steps=steps, seed=seed,
                             guidance=guidance, hidden_chunks=hidden_chunks, drift_anchor=drift_anchor)
    start = encode_first_frame(pipe, clip) if image_start else None
    session = Session(pipe, clip.prompt, cfg, tracks=traj if tracks else None, start_latents=start)
    out, n, dit, dec = [], 0, 0.0, 0.0
    while n < traj.num_frames:
        if before_chunk is not None:
            before_chunk(session, n, out)
        chunk = session.step()
        out.append(chunk.frames)
        n += len(chunk.frames)
        dit += chunk.dit_seconds
        dec += chunk.decode_seconds
    frames = np.concatenate(out)[: traj.num_frames]
    return frames, {"dit_s": dit, "decode_s": dec, "fps": len(frames) / max(dit + dec, 1e-9)}


def stream_drag(pipe, world: World, clip: Clip, start_frame: int, policy: str, policy_args: dict,
                steps: int | None, seed: int, guidance: float | None = None,
                hidden_chunks: int | None = None, drift_anchor: bool | None = None) -> tuple[np.ndarray, dict, object]:
    """The drag set's stream: `clip`'s prompt alone until video frame `start_frame` (a chunk
    boundary: `drag_start_frame`), then the stroke (`drag_trajectory`) from where its sprite is in
    the last frame shown (`grab_point`), set between chunks as the browser does
    (`Session.set_tracks`). Frames [T, H, W, 3], timing, the stroke. Raises ValueError when
    `start_frame` is not a chunk boundary of this stream."""
    strokes = []

    def stroke_at_start(session, n: int, shown: list[np.ndarray]) -> None:
        if strokes or n < start_frame:
            return
        if n != start_frame:
            raise ValueError(f"the stroke must begin at a chunk boundary: video frame {start_frame} is not one "
                             f"(the chunk boundary reached is {n})")
        grab = grab_point(shown[-1][-1], clip.scene.sprites[0], world.spawn_points(1)[0])
        strokes.append(drag_trajectory(world, clip, start_frame, grab, clip.trajectory.num_frames))
        session.set_tracks(strokes[0])

    frames, timing = stream_clip(pipe, clip, policy, policy_args, steps, seed, tracks=False, guidance=guidance,
                                 hidden_chunks=hidden_chunks, before_chunk=stroke_at_start, drift_anchor=drift_anchor)
    return frames, timing, strokes[0]


def drag_reference(pipe, world: World, clip: Clip, start_frame: int) -> tuple[np.ndarray, object]:
    """The drag set's reference row: the truth (the clip's own motion until `start_frame`, then the
    stroke from where its sprite was) through the autoencoder only. Frames and the stroke."""
    from streamer.trajectory import Trajectory

    traj = clip.trajectory
    stroke = drag_trajectory(world, clip, start_frame, traj.tracks[start_frame - 1, 0], traj.num_frames)
    tracks = stroke.tracks.copy()
    tracks[:start_frame] = traj.tracks[:start_frame]
    truth = Trajectory(tracks, np.ones_like(stroke.visible), traj.fps, traj.width, traj.height)
    rendered = Clip(world.render(clip.background, clip.scene.sprites, truth), truth, clip.prompt, clip.scene,
                    clip.background)
    return reference_frames(pipe, rendered), stroke


def reference_frames(pipe, clip: Clip) -> np.ndarray:
    """Ground-truth frames through the autoencoder only (what a perfect DiT would give)."""
    from streamer.models.frames import video_to_uint8  # not models.vae: that imports diffusers

    vae = pipe.decoder.vae
    video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    n = (video.shape[2] - 1) // 4 * 4 + 1
    with torch.inference_mode():
        lat = vae.encode(video[:, :, :n].to(pipe.decoder.device, pipe.decoder.dtype))
        state = pipe.decoder.new_state()
        frames = [video_to_uint8(pipe.decoder.decode(lat[:, :, i : i + 12], state))[0]
                  for i in range(0, lat.shape[2], 12)]
    return np.concatenate(frames)


PARTS = {"text": "text_only", "two": "two_sprites", "drag": "drag", "colours": "colours"}  # set -> results key


def run_eval(pipe, cfg: EvalConfig, world: World | None = None, progress: bool = True,
             keep_frames: dict | None = None) -> dict:
    """Every row (the autoencoder reference, then each policy) on every scene set of `cfg.sets`:
    "track" (results["policies"][row]), "text" (...["text_only"]), "two" (...["two_sprites"]),
    "drag" (...["drag"], with "stroke_starts_s") and "colours" (...["colours"], with a "grid"
    {background: {colour: found rate}}).
    keep_frames: a dict that receives the streamed frames, keyed (set, row, scene index)."""
    world = world or World()
    n_frames = stream_frames(cfg.seconds, pipe.fps)
    if "track" in cfg.sets and cfg.scenes > len(HELD_OUT_SEEDS):
        raise ValueError(f"the track set has {len(HELD_OUT_SEEDS)} held-out scenes, {cfg.scenes} asked")
    clips = [world.clip(s, n_frames) for s in HELD_OUT_SEEDS[: cfg.scenes]] if "track" in cfg.sets else []
    text_clips = text_only_clips(world, cfg.scenes, n_frames) if "text" in cfg.sets else []
    two_clips = two_sprite_clips(world, cfg.scenes, n_frames) if "two" in cfg.sets else []
    drag_clips = text_only_clips(world, cfg.scenes, n_frames) if "drag" in cfg.sets else []  # the text set's scenes
    drag_at = drag_start_frame(pipe, cfg.seconds) if drag_clips else None
    if drag_clips and drag_at is None:
        raise ValueError(f"a {cfg.seconds:g}-s stream is one chunk: the drag set's stroke needs a second one")
    colours = colour_clips(world, stream_frames(min(cfg.seconds, COLOUR_SECONDS), pipe.fps)) if "colours" in cfg.sets else []
    results: dict = {"config": asdict(cfg), "model": pipe.description, "fps": pipe.fps,
                     "dtype": str(pipe.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                     "size": list(pipe.native_size), "policies": {},
                     "sampler_steps": list(pipe.stream_config(steps=cfg.steps).sampler.steps)}
    if cfg.drift_anchor:  # the anchor's rule as run (its constants: a probe may have changed them)
        from streamer import anchor
        results["anchor"] = {"background_rms": anchor.BACKGROUND_RMS, "hold": anchor.HOLD,
                             "hold_rms": anchor.HOLD_RMS, "settle_chunks": anchor.SETTLE_CHUNKS}
    rows = ([("reference (autoencoder)", None)] if cfg.reference and hasattr(pipe.decoder, "vae")
            and hasattr(pipe.decoder.vae, "encode") else []) + [(p, p) for p in cfg.policies]
    for name, policy in rows:
        res: dict = {}
        for set_name, set_clips in (("track", clips), ("text", text_clips), ("two", two_clips), ("drag", drag_clips),
                                    ("colours", colours)):
            if not set_clips:
                continue
            scores, timing = [], []
            alone = set_name in ("text", "colours")  # a prompt alone: presence scored, not position
            for i, clip in enumerate(tqdm(set_clips, desc=f"{name} / {set_name}", disable=not progress)):
                if set_name == "drag":
                    if policy is None:
                        frames, stroke = drag_reference(pipe, world, clip, drag_at)
                    else:
                        frames, t, stroke = stream_drag(pipe, world, clip, drag_at, policy,
                                                        cfg.policy_args.get(policy, {}), cfg.steps, cfg.seed,
                                                        guidance=cfg.guidance, hidden_chunks=cfg.hidden_chunks,
                                                        drift_anchor=cfg.drift_anchor)
                        timing.append(t)
                    if keep_frames is not None:
                        keep_frames[(set_name, name, i)] = frames
                    scores.append(score_drag(frames, clip, stroke, drag_at))
                    continue
                if policy is None:
                    frames = reference_frames(pipe, clip)
                else:
                    args = cfg.policy_args.get(policy, {})
                    frames, t = stream_clip(pipe, clip, policy, args, cfg.steps, cfg.seed,
                                            tracks=not alone, image_start=set_name == "two",
                                            guidance=cfg.guidance, hidden_chunks=cfg.hidden_chunks,
                                            drift_anchor=cfg.drift_anchor)
                    timing.append(t)
                if keep_frames is not None:
                    keep_frames[(set_name, name, i)] = frames
                scores.append(score_text_only(frames, clip) if alone else score_frames(frames, clip))
            summ = summarize_text if alone else summarize_drag if set_name == "drag" else summarize
            part = summ(scores, pipe.fps)
            if timing:
                part["summary"]["stream_fps"] = _f(np.mean([t["fps"] for t in timing]))
            part["prompts"] = [c.prompt for c in set_clips]
            # per scene too: one- and multi-sprite scenes fail differently, and the mean hides which
            part["scenes"] = [summ([sc], pipe.fps)["summary"] for sc in scores]
            if set_name == "colours":
                part["grid"] = {}
                for clip, sc in zip(set_clips, part["scenes"]):
                    part["grid"].setdefault(clip.scene.background, {})[clip.scene.sprites[0].colour] = sc["found_rate"]
            if set_name == "drag":
                part["stroke_starts_s"] = _f(drag_at / pipe.fps)
            if set_name == "track":
                res.update(part)
            else:
                res[PARTS[set_name]] = part
        results["policies"][name] = res
    return results


TRACK_COLS = [("trajectory_error_px", "traj err px"), ("trajectory_error_px_last10s", "err last 10 s"),
              ("missing_rate", "missing"), ("colour_drift_rgb", "colour drift"), ("area_drift", "area drift"),
              ("background_change", "bg change"), ("border_change", "border change"),
              ("interior_change", "interior change"), ("smear", "smear"), ("phantom_rate", "phantom"),
              ("motion_kept", "motion kept"), ("stream_fps", "FPS")]
TEXT_COLS = [("found_rate", "found"), ("found_rate_after_1s", "found after 1 s"),
             ("shape_right_rate", "shape right"), ("first_found_s", "first found (s)"),
             ("second_blob_rate", "second blob"), ("stream_fps", "FPS")]
TWO_COLS = [("trajectory_error_px", "traj err px"), ("identity_kept", "identity kept"), ("missing_rate", "missing"),
            ("colour_drift_rgb", "colour drift"), ("smear", "smear"), ("phantom_rate", "phantom"),
            ("border_change", "border change"),
            ("interior_change", "interior change"), ("motion_kept", "motion kept")]


DRAG_COLS = [("grabbed", "grabbed"), ("found_before_stroke", "found before"),
             ("trajectory_error_px", "traj err px"), ("trajectory_error_px_last10s", "err last 10 s"),
             ("missing_rate", "missing"), ("phantom_rate", "phantom"), ("colour_drift_rgb", "colour drift"),
             ("smear", "smear"), ("motion_kept", "motion kept")]


def markdown_table(results: dict, part: str | None = None) -> str:
    """One row per policy; part None: the track set, "text_only" / "two_sprites" / "drag" / "colours":
    those sets."""
    cols = {None: TRACK_COLS, "text_only": TEXT_COLS, "two_sprites": TWO_COLS, "drag": DRAG_COLS,
            "colours": TEXT_COLS}[part]
    lines = ["| policy | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in results["policies"].items():
        r = res if part is None else res.get(part)
        if not r or "summary" not in r:
            continue
        s = r["summary"]
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


def per_scene_table(results: dict, part: str, first: str, cols: list[tuple[str, str, str]]) -> str:
    """A row per scene of the set `part` ("two_sprites", "text_only"), a column per policy; each cell
    the scene's `cols` values (key, format spec, label) joined by " / " ("-": not measured). The
    first column is headed `first`. Empty when no policy ran the set with per-scene scores."""
    policies = {n: r[part] for n, r in results["policies"].items() if r.get(part, {}).get("scenes")}
    if not policies:
        return ""
    heading = " / ".join(label for _, _, label in cols)
    lines = [f"| {first} | " + " | ".join(f"{n}: {heading}" for n in policies) + " |",
             "|---" * (len(policies) + 1) + "|"]
    for i, prompt in enumerate(next(iter(policies.values()))["prompts"]):
        cells = [" / ".join("-" if (v := res["scenes"][i].get(key)) is None else format(v, spec)
                            for key, spec, _ in cols) for res in policies.values()]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def two_scene_table(results: dict) -> str:
    """Trajectory error / identity kept per two-sprite scene, a row each (one hard pair of colours
    moves a few scenes' mean by points: the rows say which)."""
    return per_scene_table(results, "two_sprites", "scene",
                           [("trajectory_error_px", ".3g", "err px"), ("identity_kept", ".3f", "identity")])


def text_scene_table(results: dict) -> str:
    """Found / second blob per text-only prompt, a row each: a sprite whose colour is close to its
    background can be lost for most of a stream while the other prompts keep theirs, so a few
    prompts' mean moves by points with which prompts they are."""
    return per_scene_table(results, "text_only", "prompt",
                           [("found_rate", ".3f", "found"), ("second_blob_rate", ".3f", "second blob")])


def drag_scene_table(results: dict) -> str:
    """Grabbed / error after the stroke / phantom per drag-set prompt, a row each."""
    return per_scene_table(results, "drag", "prompt", [("grabbed", ".0f", "grabbed"),
                                                        ("trajectory_error_px", ".3g", "err px"),
                                                        ("phantom_rate", ".3f", "phantom")])


def write_markdown(results: dict, path: Path) -> None:
    cfg = results["config"]
    scenes = f"{cfg['scenes']} scene" + ("s" if cfg["scenes"] != 1 else "")
    if not set(cfg.get("sets", SETS)) - {"colours"}:  # the colours set streams its own fixed prompts
        scenes = "the colours set's prompts"
    steps = len(results["sampler_steps"]) if results.get("sampler_steps") else cfg["steps"]
    text = (f"# streamer eval ({cfg['seconds']:g} s streams, {scenes}, {steps} steps)\n\n"
            f"{results['model']}\n\n")
    knobs = [f"{p} " + " ".join(f"{k}={v}" for k, v in cfg.get("policy_args", {}).get(p, {}).items())
             for p in cfg["policies"]]
    text += f"Policies: {'; '.join(k.strip() for k in knobs)} (knobs not named: the policy's defaults)\n\n"
    if cfg.get("guidance") is not None:
        text += f"Text guidance: {cfg['guidance']:g} (classifier-free; 1 = off)\n\n"
    if cfg.get("hidden_chunks"):
        text += (f"Hidden chunks: {cfg['hidden_chunks']} (made before the first frame shown, and not scored; "
                 "none after an image start)\n\n")
    if cfg.get("drift_anchor"):
        text += ("Drift anchor: on (each chunk's background cells shifted back by the median of its latents' "
                 "difference from the first chunk's, per channel")
        if (rule := results.get("anchor")) and rule.get("hold"):
            text += (f", and those still within {rule['hold_rms']:g} of it moved {rule['hold']:g} of the rest of "
                     "the way back")
        text += "; `streamer.anchor`)\n\n"
    if results.get("dtype"):
        text += f"DiT dtype: {results['dtype']}, {results.get('threads', '?')} CPU thread(s)\n\n"
    if "track" in cfg.get("sets", SETS):  # (--sets text,two: no empty table)
        text += markdown_table(results)
    if cfg["scenes"] > 1 and (scenes := scene_table(results)):
        text += f"\nPer scene:\n\n{scenes}"
    for _, heading, table in set_tables(results):
        text += f"\n{heading}:\n\n{table}"
    if cfg["scenes"] > 1 and (alone := text_scene_table(results)):
        text += f"\nText only, per prompt:\n\n{alone}"
    if cfg["scenes"] > 1 and (two := two_scene_table(results)):
        text += f"\nTwo sprites, per scene:\n\n{two}"
    if cfg["scenes"] > 1 and (drag := drag_scene_table(results)):
        text += f"\nA prompt alone, then a stroke, per prompt:\n\n{drag}"
    path.write_text(text + "\n![curves](eval.png)\n")


def set_tables(results: dict) -> list[tuple[str, str, str]]:
    """(title, heading with the prompts, markdown table) of the text-only, two-sprite and colours
    sets that ran; the colours set's table is followed by its grid (`colour_grid`)."""
    first = next(iter(results["policies"].values()), {})
    out = []
    if "text_only" in first:
        out.append(("Text only", f"Text only (the prompt, no tracks: {'; '.join(first['text_only']['prompts'])})",
                    markdown_table(results, "text_only")))
    if "two_sprites" in first:
        out.append(("Two sprites from their true first frame", "Two sprites from their true first frame, a track "
                    f"on each ({'; '.join(first['two_sprites']['prompts'])})", markdown_table(results, "two_sprites")))
    if "drag" in first:
        out.append(("A prompt alone, then a stroke", "A prompt alone, then a stroke from its sprite at "
                    f"{first['drag']['stroke_starts_s']:g} s (scored from the stroke on; grabbed: the sprite was "
                    f"there to draw on; {'; '.join(first['drag']['prompts'])})", markdown_table(results, "drag")))
    if "colours" in first:
        seconds = min(results.get("config", {}).get("seconds", COLOUR_SECONDS), COLOUR_SECONDS)
        out.append(("Colours", "Colours (a prompt alone, \"a <colour> circle on a <background> background\", every "
                    f"colour on every background it does not clash with, {seconds:g} s each: "
                    f"{len(first['colours']['prompts'])} prompts)",
                    markdown_table(results, "colours") + "\n" + colour_grid(results)))
    return out


def colour_grid(results: dict) -> str:
    """Markdown: per row (reference, policies), the colours set's found rate with a background per
    line and a colour per column ("-" where the pair clashes and is not streamed)."""
    from streamer.world.scenes import BACKGROUNDS, COLOURS

    text = ""
    for name, res in results["policies"].items():
        grid = res.get("colours", {}).get("grid")
        if not grid:
            continue
        lines = [f"| {name}: found | " + " | ".join(COLOURS) + " |", "|---" * (len(COLOURS) + 1) + "|"]
        for bg in BACKGROUNDS:
            row = grid.get(bg, {})
            lines.append(f"| {bg} | " + " | ".join("-" if row.get(c) is None else f"{row[c]:.2f}" for c in COLOURS) + " |")
        text += "\n".join(lines) + "\n\n"
    return text


PANELS = [  # (part, curve, title): one panel per metric
    (None, "err", "trajectory error (px)"), (None, "motion_kept", "motion kept (achieved / requested)"),
    (None, "colour_drift", "identity: colour drift (RGB)"), (None, "area_drift", "identity: area drift"),
    (None, "bg_change", "background change (0-255)"), (None, "missing", "sprite missing rate"),
    (None, "border_change", f"border band ({BORDER} px) change (0-255)"),
    (None, "interior_change", "interior change (0-255)"), (None, "smear", "smear: colour left on the path (0-1)"),
    (None, "phantom", "phantom: a sprite far from every track"),
    ("text_only", "found", "text only: sprite found"),
    ("text_only", "second", "text only: its colour as a second blob"), ("two_sprites", "err", "two sprites: error (px)"),
    ("two_sprites", "identity", "two sprites: identity kept"),
    ("drag", "err", "text, then a stroke: error (px)"), ("drag", "phantom", "text, then a stroke: phantom"),
    ("colours", "found", "colours: sprite found (mean)"),
]


def moving_average(y: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over k points that skips NaNs (NaN where the window has no value)."""
    k = max(1, min(k, len(y)))  # np.convolve's "same" is as long as the longer input
    ok = np.isfinite(y)
    num = np.convolve(np.where(ok, y, 0.0), np.ones(k), mode="same")
    den = np.convolve(ok.astype(float), np.ones(k), mode="same")
    with np.errstate(all="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-9), np.nan)


def plot(results: dict, path: Path, smooth_s: int | None = None) -> None:
    """One panel per metric; each curve a moving average (default: ~1/12 of the stream, at least
    3 s) drawn over its raw per-second values, faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, k, t) for p, k, t in PANELS
              if any((r if p is None else r.get(p, {})).get("curves", {}).get(k) for r in results["policies"].values())]
    cols = max(1, min(4, len(panels)))  # one set alone (e.g. --sets colours): no empty panels
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (part, k, title) in zip(axes.flat, panels):
        for i, (name, res) in enumerate(results["policies"].items()):
            r = res if part is None else res.get(part)
            if not r or not r.get("curves", {}).get(k):
                continue
            y = np.array([np.nan if v is None else v for v in r["curves"][k]], float)
            x = np.arange(len(y))
            c = colours[i % len(colours)]
            ax.plot(x, y, color=c, lw=0.8, alpha=0.25)
            ax.plot(x, moving_average(y, smooth_s or max(3, len(y) // 12)), color=c, lw=2.0,
                    ls="--" if name.startswith("reference") else "-", label=name)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("time after the stroke began (s)" if part == "drag" else "stream time (s)", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=9)
    # wrapped to the figure's width: a model's description can outrun one line, and a centred
    # title that does is cut at both ends
    title = f"streamer eval: {results['model']}  (thick: moving average; faint: per second)"
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


CONTACT_ROWS = (("text", "text only"), ("track", "one track"), ("two", "two tracks, image start"),
                ("drag", "text, then a stroke"))


def contact_frames(keep: dict, row: str, fps: float, times: tuple[float, ...]) -> dict[str, list[np.ndarray]]:
    """From run_eval's keep_frames: for each set's first scene (the "track" set: its first one-sprite
    scene), the frames at `times` (s; the last frame where the stream is shorter). {set: [frames]}"""
    out = {}
    for set_name, _ in CONTACT_ROWS:
        frames = keep.get((set_name, row, 0))
        if frames is not None:
            out[set_name] = [frames[min(int(round(t * fps)), len(frames) - 1)] for t in times]
    return out


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], times: tuple[float, ...], path: Path,
                  scale: int = 2) -> None:
    """A PNG grid: one labelled row per (label, frames uint8 [H, W, 3]), one column per time (s)."""

    def label(img: np.ndarray, text: str) -> np.ndarray:
        bar = np.full((18, img.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        return np.concatenate([bar, img], 0)

    grid = []
    for name, frames in rows:
        tiles = [np.kron(f, np.ones((scale, scale, 1), np.uint8)) for f in frames]
        cells = [label(tile, f"{name}, {t:g} s") for tile, t in zip(tiles, times)]
        grid.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], 1))
    width = max(g.shape[1] for g in grid)
    grid = [np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grid]
    cv2.imwrite(str(path), np.concatenate(grid, 0)[..., ::-1])


def measure_speed(pipe, seconds: float = 10.0, steps: int | None = None, policy: str = "window",
                  policy_args: dict | None = None, seed: int = 0, guidance: float | None = None,
                  hidden_chunks: int | None = None, drift_anchor: bool | None = None) -> dict:
    """End-to-end speed of one stream of `seconds` (DiT + decode, trajectory channels included).

    Returns a dict: `first_frame_s`, the time from `Session(...)` (prompt encoding included) to the
    first chunk's video frames; `frames`, the video frames made (the first chunk's included, whole
    chunks, so up to a chunk over `seconds`); `fps`, the steady video frames per second of the chunks
    after the first (`steady_frames` of them); the DiT's and the decoder's ms per 12 video frames.
    Raises InputError when `seconds` is one chunk, which leaves no steady part to time."""
    from streamer.session import Session

    world = World()  # the scene's prompt and trajectory; its frames are not drawn (nothing is scored)
    scene = world.scene(HELD_OUT_SEEDS[0])
    trajectory, prompt = world.trajectory(scene, stream_frames(seconds, pipe.fps)), scene.prompt(None)
    w, h = pipe.native_size
    cfg = pipe.stream_config(size=(w, h), policy=policy, policy_args=policy_args, steps=steps, seed=seed,
                             guidance=guidance, hidden_chunks=hidden_chunks, drift_anchor=drift_anchor)
    t0 = time.perf_counter()
    session = Session(pipe, prompt + f" #{seed}", cfg)  # a new prompt: the text encoder runs
    session.set_tracks(trajectory)
    first = session.step()
    first_s = time.perf_counter() - t0
    if len(first.frames) >= trajectory.num_frames:
        raise InputError(f"--seconds {seconds:g} is one chunk ({len(first.frames)} video frames): the speed is "
                         f"timed over the chunks after the first; give more than {len(first.frames) / pipe.fps:.2f} s")
    n, dit, dec = 0, 0.0, 0.0
    t1 = time.perf_counter()
    while len(first.frames) + n < trajectory.num_frames:
        c = session.step()
        n, dit, dec = n + len(c.frames), dit + c.dit_seconds, dec + c.decode_seconds
    wall = time.perf_counter() - t1
    return {"seconds": seconds, "first_frame_s": round(first_s, 3), "first_chunk_frames": len(first.frames),
            "frames": len(first.frames) + n, "steady_frames": n,
            "fps": round(n / wall, 1), "dit_ms_per_chunk": round(1e3 * dit * 12 / n, 1),
            "decode_ms_per_chunk": round(1e3 * dec * 12 / n, 1), "steps": len(cfg.sampler.steps),
            "hidden_chunks": cfg.hidden_chunks, "drift_anchor": cfg.drift_anchor, "policy": policy,
            "threads": torch.get_num_threads()}


def cmd_eval(args) -> int:
    from streamer.device import default_device, default_dtype
    from streamer.pipeline import Pipeline
    from streamer.policies import BOUNDED_POLICIES, POLICIES, parse_policy_args

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype or "")
    if args.seconds is not None and args.seconds > EVAL_SECONDS_MAX:
        raise InputError(f"--seconds {args.seconds:g}: streams up to {EVAL_SECONDS_MAX:g} s (an hour); the eval holds "
                         "every frame of a stream and its ground truth in memory")
    if args.speed and (args.contact or args.sets is not None):
        raise InputError(f"--speed times one stream and scores nothing: leave out "
                         f"{' and '.join(f for f, on in (('--contact', args.contact), ('--sets', args.sets)) if on)}")
    if args.out is not None:  # before any work: an eval must not end in an unwritable folder
        checks.check_writable_folder(args.out)
    if args.weights is None:
        pipe = Pipeline.load(device=args.device, dtype=dtype)
    else:  # a `streamer train` run folder: score a checkpoint before (or instead of) shipping it
        device = torch.device(args.device) if args.device else default_device()
        pipe = Pipeline.load_default(args.weights, device=device, dtype=dtype or default_dtype(device))
    # after loading: Pipeline.load sets torch's threads to the machine's cores (configure_threads)
    torch.set_num_threads(args.threads)
    defaults = pipe.stream_defaults or {}  # the policy and knobs the model was trained to stream with
    if not pipe.model.config.track_channels:
        raise InputError("streamer eval needs a model with trajectory channels (the default world model)")
    if args.policies is None:  # the policy (and knobs) the model streams with by default
        args.policies = defaults.get("policy", "window")
    policies = BOUNDED_POLICIES if args.policies == "all" else tuple(p.strip() for p in args.policies.split(","))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise InputError(f"--policies: unknown policies {unknown}; known: {', '.join(POLICIES)}")
    policy_args: dict[str, dict] = {}
    if defaults.get("policy") in policies:  # the window the model was trained for
        policy_args[defaults["policy"]] = dict(defaults.get("policy_args", {}))
    for item in args.policy_arg:  # policy:key=value
        if ":" not in item:
            raise InputError(f"--policy-arg {item!r} must look like policy:key=value")
        pol, kv = item.split(":", 1)
        if pol not in policies:  # a knob for a policy not streamed would change nothing, silently
            raise InputError(f"--policy-arg {item!r}: {pol} is not among the policies streamed ({', '.join(policies)})")
        policy_args.setdefault(pol, {}).update(parse_policy_args([kv]))
    if args.speed:
        if len(policies) > 1:
            raise InputError(f"--speed times one stream: give one policy, not {', '.join(policies)}")
        res = measure_speed(pipe, args.seconds or 10.0, args.steps, policies[0], policy_args.get(policies[0]),
                            guidance=args.guidance, hidden_chunks=args.hidden_chunks,
                            drift_anchor=None if args.drift_anchor is None else args.drift_anchor == "on")
        print(json.dumps(res))
        if args.out is not None:
            (Path(args.out) / "speed.json").write_text(json.dumps(res, indent=1))
            print(f"wrote {Path(args.out) / 'speed.json'}")
        return 0
    args.seconds = args.seconds or 60.0
    sets = tuple(x.strip() for x in (args.sets or ",".join(SETS)).split(","))
    if bad := [x for x in sets if x not in ALL_SETS]:
        raise InputError(f"--sets {','.join(bad)}: unknown; known: {', '.join(ALL_SETS)}")
    if "track" in sets and args.scenes > len(HELD_OUT_SEEDS):
        raise InputError(f"--scenes {args.scenes}: the track set has {len(HELD_OUT_SEEDS)} held-out scenes; "
                         f"up to {MAX_DRAWN_SCENES} for --sets text,two,drag")
    if "drag" in sets and drag_start_frame(pipe, args.seconds) is None:
        first = pipe.decoder.frames.video_frames(pipe.stream_config().chunk_frames) / pipe.fps
        raise InputError(f"--seconds {args.seconds:g} is one chunk: the drag set's stroke begins at a chunk boundary; "
                         f"give more than {first:.2f} s or leave it out with "
                         f"--sets {','.join(x for x in sets if x != 'drag') or 'text'}")
    cfg = EvalConfig(seconds=args.seconds, policies=policies, scenes=args.scenes, steps=args.steps, seed=args.seed,
                     reference=not args.no_reference, policy_args=policy_args, sets=sets,
                     guidance=args.guidance if args.guidance is not None else float(defaults.get("guidance", 1.0)),
                     hidden_chunks=(args.hidden_chunks if args.hidden_chunks is not None
                                    else int(defaults.get("hidden_chunks", 0))),
                     drift_anchor=(args.drift_anchor == "on" if args.drift_anchor is not None
                                   else bool(defaults.get("drift_anchor", False))))
    out = checks.check_writable_folder(args.out or DEFAULT_OUT)
    t0 = time.time()
    keep: dict | None = {} if args.contact else None
    results = run_eval(pipe, cfg, progress=not args.quiet, keep_frames=keep)
    results["wall_seconds"] = round(time.time() - t0, 1)
    if keep:
        times = tuple(t for t in (0.0, 10.0, 60.0, 600.0) if t <= args.seconds)
        for policy in cfg.policies[:1]:
            found = contact_frames(keep, policy, pipe.fps, times)
            np.savez_compressed(out / "contact.npz", times=np.array(times),
                                **{k: np.stack(v) for k, v in found.items()})
            contact_sheet([(label, found[k]) for k, label in CONTACT_ROWS if k in found], times, out / "contact.png")
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "eval.md")
    plot(results, out / "eval.png")
    if "track" in cfg.sets:
        print(markdown_table(results))
    for title, _, set_table in set_tables(results):  # every set on the terminal too, not only in eval.md
        print(f"{title}:\n\n{set_table}")
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
    p.add_argument("--seconds", type=checks.positive_seconds, help="stream length (default 60; 10 with --speed)")
    p.add_argument("--policies", type=_policy_list,
                   help="comma-separated cache policies, or 'all' (default: the model's own, with its trained knobs)")
    p.add_argument("--policy-arg", action="append", default=[], metavar="POLICY:K=V", help="policy knob, repeatable")
    p.add_argument("--scenes", type=checks.int_in(1, MAX_DRAWN_SCENES), default=2,
                   help=f"held-out scenes per set and policy, 1-{MAX_DRAWN_SCENES} (default 2): the track set has "
                        f"{len(HELD_OUT_SEEDS)}, text and two draw up to {MAX_DRAWN_SCENES}; the colours set streams "
                        "its own prompts and ignores it")
    p.add_argument("--steps", type=checks.int_in(1, checks.STEPS_MAX),
                   help="denoising steps, evenly spaced from t = 1000 (default: the model's own)")
    p.add_argument("--guidance", type=checks.non_negative_float,
                   help="text classifier-free guidance scale, 1 = off (default: the model's own)")
    p.add_argument("--hidden-chunks", type=checks.int_in(0, checks.HIDDEN_CHUNKS_MAX), metavar="N",
                   help="chunks made before the first one shown (default: the model's own; none after an image start)")
    p.add_argument("--drift-anchor", choices=("on", "off"),
                   help="hold a still background at the first chunk's: its level, and its still cells half way back "
                        "each chunk (the hold; streamer.anchor; default: the model's own)")
    p.add_argument("--sets",
                   help="scene sets: track (prompt + tracks), text (prompt alone), two (two sprites from their "
                        "true first frame, a track on each), drag (a prompt alone, then a stroke from its sprite "
                        f"at {DRAG_AT_S:g} s), colours (every colour x background as a prompt "
                        f"alone, {COLOUR_SECONDS:g} s each); default: {','.join(SETS)}")
    p.add_argument("--seed", type=checks.int_in(0, checks.SEED_MAX), default=0,
                   help="noise seed of every stream (default 0); the scenes are the held-out ones whatever the seed")
    p.add_argument("--out", help=f"folder for eval.json, eval.md, eval.png (default {DEFAULT_OUT}); with --speed, "
                                 "speed.json (default: printed only)")
    p.add_argument("--no-reference", action="store_true", help="skip the autoencoder-only reference row")
    p.add_argument("--contact", action="store_true",
                   help="also write contact.png (+ contact.npz): each set's first stream at 0 s, 10 s, 1 min, 10 min")
    p.add_argument("--weights", metavar="DIR",
                   help="world-model folder with dit.safetensors + vae.safetensors, e.g. a `streamer train --out` "
                        "run (default: the shipped weights)")
    p.add_argument("--device", type=checks.device, help="cuda / cpu")
    p.add_argument("--threads", type=checks.int_in(1, 1024), default=2, help="torch CPU threads (default 2)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                   help="as for generate (default: bf16 on GPU, on a CPU the faster of bf16 and fp32 there); "
                        "fix it to compare models scored on different machines")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--speed", action="store_true",
                   help="only measure end-to-end FPS and first-frame latency of one stream (10 s unless --seconds; "
                        "the first held-out track scene, the model's own policy unless --policies names one): prints "
                        "one JSON line, and with --out writes it to speed.json")
    p.set_defaults(func=cmd_eval)
