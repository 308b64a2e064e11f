"""Canvas strokes -> Trajectory, the pure-Python half of the painting UI.

The page sends each painted path as points `[x, y, t]` in canvas pixels with `t` in milliseconds
since the stroke began. Drawing speed is motion speed (ATI's editor does the same): video frame
`start + k` of a track sits where the pen was `k / fps` seconds into the stroke. After the pen
lifts the track holds its last point (the dragged thing stays where it was put), and a static
stroke (an anchor: a click, or a path marked static) holds its point from its start frame on.
Before its start frame a track is invisible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streamer.trajectory import MAX_TRACKS, Trajectory

MAX_POINTS = 4096         # per stroke: about a minute of drawing at 60 mouse events/s
MAX_STROKE_MS = 600_000   # 10 minutes; a longer "stroke" is a broken client, not a gesture
STATIC_PX = 2.0           # a stroke that never leaves this radius (canvas px) is an anchor


@dataclass
class Stroke:
    points: np.ndarray        # float64 [P, 3]: x, y (canvas px), t (ms since the stroke began)
    static: bool = False
    start: int | None = None  # first video frame; None: the caller assigns it (0, or "now" when live)
    id: str = ""

    def end_frame(self, fps: float, start: int = 0) -> int:
        """The video frame where the pen lifts (the track holds its last point after it)."""
        start = self.start if self.start is not None else start
        return start if self.static else start + int(math.ceil(self.points[-1, 2] / 1000.0 * fps))


def parse_strokes(payload: object, canvas: tuple[float, float]) -> list[Stroke]:
    """Validate the page's stroke list; raises ValueError with a message fit to show the user."""
    if not isinstance(payload, list):
        raise ValueError("tracks must be a list of strokes")
    if len(payload) > MAX_TRACKS:
        raise ValueError(f"too many tracks: {len(payload)} (at most {MAX_TRACKS})")
    cw, ch = canvas
    if not (cw > 0 and ch > 0):
        raise ValueError(f"canvas size must be positive, got {cw}x{ch}")
    strokes = []
    for n, item in enumerate(payload):
        if not isinstance(item, dict) or "points" not in item:
            raise ValueError(f"track {n + 1}: expected {{'points': [[x, y, t], ...]}}")
        raw = item["points"]
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"track {n + 1} has no points")
        if len(raw) > MAX_POINTS:
            raise ValueError(f"track {n + 1} has {len(raw)} points (at most {MAX_POINTS})")
        try:
            pts = np.array([[float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else 0.0] for p in raw])
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"track {n + 1}: points must be [x, y, t] numbers") from None
        if not np.isfinite(pts).all():
            raise ValueError(f"track {n + 1} has a NaN/inf coordinate")
        out = (pts[:, 0] < 0) | (pts[:, 0] > cw) | (pts[:, 1] < 0) | (pts[:, 1] > ch)
        if out.any():
            x, y = pts[np.argmax(out), :2]
            raise ValueError(f"track {n + 1}: point ({x:.0f}, {y:.0f}) is outside the {cw:.0f}x{ch:.0f} frame")
        pts[:, 2] -= pts[0, 2]  # times relative to the stroke's first point
        if (np.diff(pts[:, 2]) < 0).any():
            raise ValueError(f"track {n + 1}: timestamps go backwards")
        if pts[-1, 2] > MAX_STROKE_MS:
            raise ValueError(f"track {n + 1} lasts {pts[-1, 2] / 1000:.0f} s (at most {MAX_STROKE_MS // 1000} s)")
        moved = np.hypot(pts[:, 0] - pts[0, 0], pts[:, 1] - pts[0, 1]).max()
        start = item.get("start")
        if start is not None and (not isinstance(start, (int, float)) or start < 0 or not math.isfinite(start)):
            raise ValueError(f"track {n + 1}: start frame must be a number >= 0")
        strokes.append(Stroke(pts, static=bool(item.get("static")) or moved <= STATIC_PX,
                              start=None if start is None else int(start), id=str(item.get("id", n))))
    return strokes


def stroke_track(stroke: Stroke, fps: float, num_frames: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One stroke as per-frame positions [num_frames, 2] (canvas px) and visibility [num_frames]."""
    start = stroke.start if stroke.start is not None else start
    xy = np.repeat(stroke.points[:1, :2], num_frames, axis=0)
    visible = np.arange(num_frames) >= start
    if stroke.static or len(stroke.points) == 1:
        return xy, visible
    k = np.arange(max(0, num_frames - start))
    t = k * 1000.0 / fps  # when frame start + k happens, in stroke time
    p = stroke.points
    # np.interp clamps past the last point: the track holds where the pen lifted.
    xy[start:, 0] = np.interp(t, p[:, 2], p[:, 0])
    xy[start:, 1] = np.interp(t, p[:, 2], p[:, 1])
    return xy, visible


def strokes_to_trajectory(strokes: list[Stroke], canvas: tuple[float, float], frame: tuple[int, int], fps: float,
                          num_frames: int) -> Trajectory | None:
    """Strokes on a canvas of size `canvas` (w, h) -> a Trajectory in pixels of `frame` (w, h),
    `num_frames` video frames long; None when there are no strokes (no drag)."""
    if not strokes:
        return None
    num_frames = max(1, num_frames)
    tracks = np.zeros((num_frames, len(strokes), 2), np.float32)
    visible = np.zeros((num_frames, len(strokes)), bool)
    for n, s in enumerate(strokes):
        tracks[:, n], visible[:, n] = stroke_track(s, fps, num_frames)
    # canvas px -> frame px: the canvas shows the whole frame, scaled
    tracks *= np.array([frame[0] / canvas[0], frame[1] / canvas[1]], np.float32)
    return Trajectory(tracks, visible, fps, frame[0], frame[1])


def trajectory_to_strokes(traj: Trajectory, canvas: tuple[float, float]) -> list[dict]:
    """An imported Trajectory as page strokes (points at frame times, canvas px), so it can be shown,
    edited and sent back. Frames where a track is invisible are dropped; it starts at its first
    visible frame."""
    scale = np.array([canvas[0] / traj.width, canvas[1] / traj.height])
    strokes = []
    for n in range(traj.num_tracks):
        frames = np.nonzero(traj.visible[:, n])[0]
        if len(frames) == 0:
            continue
        xy = np.clip(traj.tracks[frames, n].astype(np.float64) * scale, 0, canvas)
        t = (frames - frames[0]) * 1000.0 / traj.fps
        moved = np.hypot(*(xy - xy[0]).T).max()
        strokes.append({
            "id": f"import-{n}", "start": int(frames[0]), "static": bool(moved <= STATIC_PX),
            "points": [[round(float(x), 2), round(float(y), 2), round(float(ms), 1)] for (x, y), ms in zip(xy, t)],
        })
    return strokes
