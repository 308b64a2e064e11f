"""Trajectories: the one internal format, plus Wan-Move and ATI-style import/export.

Inside the project a trajectory is float32 `tracks[T, N, 2]` (x, y) in pixels of the output
frame, `visible[T, N]`, the frame rate and the frame size (DESIGN section 6). Everything that
reads a file goes through `Trajectory.validate`, which raises a `ValueError` naming the problem,
so a malformed upload fails at load time rather than deep inside a stream.

Formats:
- own: `.npz` (tracks, visible, fps, width, height) or `.json` ({"tracks": [[[x, y], ...], ...],
  "visible": ..., "fps", "width", "height"});
- Wan-Move: a folder (or two paths) with `tracks.npy` [1, F, N, 2] and `visibility.npy` [1, F, N]
  (or [F, N]); Wan-Move has no frame size or fps in the files, so they are arguments;
- ATI-style JSON: a list of tracks, each a list of points `[x, y]` or `{"x":..,"y":..,"visible":..}`
  one per frame, optionally wrapped as {"tracks": [...], "width", "height", "fps"}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_TRACKS = 16          # the track-ID embedding gives each track its own code; more than this is refused
OUTSIDE_MARGIN = 1.0     # points may leave the frame (entering/leaving sprites) by up to this x frame size


@dataclass
class Trajectory:
    tracks: np.ndarray   # float32 [T, N, 2], (x, y) pixels of the output frame
    visible: np.ndarray  # bool [T, N]
    fps: float = 16.0
    width: int = 128
    height: int = 128

    def __post_init__(self) -> None:
        self.tracks = np.asarray(self.tracks, dtype=np.float32)
        self.visible = np.asarray(self.visible).astype(bool)
        self.validate()

    @property
    def num_frames(self) -> int:
        return self.tracks.shape[0]

    @property
    def num_tracks(self) -> int:
        return self.tracks.shape[1]

    def validate(self) -> None:
        t = self.tracks
        if t.ndim != 3 or t.shape[-1] != 2:
            raise ValueError(f"tracks must have shape [T, N, 2]; got {list(t.shape)}")
        if t.shape[0] < 1:
            raise ValueError("trajectory has no frames")
        if t.shape[1] > MAX_TRACKS:
            raise ValueError(f"too many tracks: {t.shape[1]} (at most {MAX_TRACKS})")
        if self.visible.shape != t.shape[:2]:
            raise ValueError(f"visible must have shape {list(t.shape[:2])} (frames, tracks); got {list(self.visible.shape)}")
        if not np.isfinite(t).all():
            bad = np.argwhere(~np.isfinite(t))[0]
            raise ValueError(f"track {bad[1]} has a NaN/inf point at frame {bad[0]}")
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"frame size must be positive; got {self.width}x{self.height}")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive; got {self.fps}")
        mx, my = OUTSIDE_MARGIN * self.width, OUTSIDE_MARGIN * self.height
        far = (t[..., 0] < -mx) | (t[..., 0] > self.width + mx) | (t[..., 1] < -my) | (t[..., 1] > self.height + my)
        if far.any():
            f, n = np.argwhere(far)[0]
            raise ValueError(
                f"track {n} at frame {f} is at ({t[f, n, 0]:.1f}, {t[f, n, 1]:.1f}), far outside the "
                f"{self.width}x{self.height} frame (coordinates must be pixels of the output frame)")

    # ---- resampling -----------------------------------------------------------------------------
    def resized(self, width: int, height: int) -> Trajectory:
        """The same paths in another frame size (tracks scale with the frame)."""
        scale = np.array([width / self.width, height / self.height], dtype=np.float32)
        return Trajectory(self.tracks * scale, self.visible, self.fps, width, height)

    def looped(self, num_frames: int) -> Trajectory:
        """The paths repeated from their start until `num_frames` (for closed paths: a loop drawn once
        steers a video of any length instead of leaving the sprites free after its last frame)."""
        if num_frames < 1:
            raise ValueError("a looped trajectory needs at least one frame")
        idx = np.arange(num_frames) % self.num_frames
        return Trajectory(self.tracks[idx], self.visible[idx], self.fps, self.width, self.height)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Points and visibility at video frame i; past the end the sprites are gone (invisible)."""
        if 0 <= i < self.num_frames:
            return self.tracks[i], self.visible[i]
        return self.tracks[-1], np.zeros(self.num_tracks, bool)

    # ---- own format -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps({
                "tracks": self.tracks.round(3).tolist(), "visible": self.visible.tolist(),
                "fps": self.fps, "width": self.width, "height": self.height,
            }))
        else:
            np.savez(path, tracks=self.tracks, visible=self.visible, fps=self.fps, width=self.width,
                     height=self.height)

    @classmethod
    def load(cls, path: str | Path, **kw) -> Trajectory:
        """Own .npz/.json, ATI-style .json, or a Wan-Move folder / tracks.npy (kw: width, height, fps)."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no trajectory file at {path}")
        if path.is_dir() or path.name == "tracks.npy":
            return from_wan_move(path, **kw)
        if path.suffix == ".npz":
            try:
                d = np.load(path)
                return cls(d["tracks"], d["visible"], float(d["fps"]), int(d["width"]), int(d["height"]))
            except KeyError as e:
                raise ValueError(f"{path}: missing array {e} (expected tracks, visible, fps, width, height)") from None
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
            return from_json(data, **kw)
        raise ValueError(f"{path}: unknown trajectory file type {path.suffix!r} (.npz, .json, or Wan-Move tracks.npy)")


def from_json(data: object, width: int | None = None, height: int | None = None, fps: float | None = None) -> Trajectory:
    """Own JSON ({"tracks": [T][N][2], "visible": [T][N]}) or ATI-style point lists ([N][T] points)."""
    meta = data if isinstance(data, dict) else {}
    width = int(meta.get("width", width or 128))
    height = int(meta.get("height", height or 128))
    fps = float(meta.get("fps", fps or 16.0))
    if isinstance(data, dict) and "visible" in data and "tracks" in data:  # own layout, frame-major
        try:
            tracks = np.asarray(data["tracks"], dtype=np.float32)
            visible = np.asarray(data["visible"], dtype=bool)
        except (ValueError, TypeError) as e:
            raise ValueError(f"tracks/visible are not rectangular numeric arrays ({e})") from None
        return Trajectory(tracks, visible, fps, width, height)
    lists = data.get("tracks") if isinstance(data, dict) else data
    if not isinstance(lists, list) or not lists:
        raise ValueError("ATI-style JSON must be a non-empty list of tracks (each a list of per-frame points)")
    lengths = {len(tr) if isinstance(tr, list) else -1 for tr in lists}
    if -1 in lengths:
        raise ValueError("each ATI-style track must be a list of points")
    if len(lengths) != 1:
        raise ValueError(f"ATI-style tracks must all have the same number of frames; got lengths {sorted(lengths)}")
    n_frames = lengths.pop()
    tracks = np.zeros((n_frames, len(lists), 2), np.float32)
    visible = np.ones((n_frames, len(lists)), bool)
    for n, tr in enumerate(lists):
        for f, p in enumerate(tr):
            try:
                if isinstance(p, dict):
                    tracks[f, n] = (float(p["x"]), float(p["y"]))
                    visible[f, n] = bool(p.get("visible", True))
                else:
                    tracks[f, n] = (float(p[0]), float(p[1]))
                    if len(p) > 2:
                        visible[f, n] = bool(p[2])
            except (KeyError, IndexError, TypeError, ValueError):
                raise ValueError(f"track {n}, frame {f}: point {p!r} is not [x, y] or {{'x':..,'y':..}}") from None
    return Trajectory(tracks, visible, fps, width, height)


def to_ati_json(traj: Trajectory) -> dict:
    return {
        "width": traj.width, "height": traj.height, "fps": traj.fps,
        "tracks": [[{"x": round(float(traj.tracks[f, n, 0]), 3), "y": round(float(traj.tracks[f, n, 1]), 3),
                     "visible": bool(traj.visible[f, n])} for f in range(traj.num_frames)]
                   for n in range(traj.num_tracks)],
    }


def from_wan_move(path: str | Path, visibility: str | Path | None = None, width: int = 832, height: int = 480,
                  fps: float = 16.0) -> Trajectory:
    """Wan-Move `tracks.npy` [1, F, N, 2] (+ `visibility.npy` [1, F, N]); path: the folder or tracks.npy."""
    path = Path(path)
    tracks_path = path / "tracks.npy" if path.is_dir() else path
    vis_path = Path(visibility) if visibility else tracks_path.with_name("visibility.npy")
    if not tracks_path.is_file():
        raise ValueError(f"no Wan-Move tracks.npy at {tracks_path}")
    tracks = np.load(tracks_path, allow_pickle=False)
    if tracks.ndim == 4:
        if tracks.shape[0] != 1:
            raise ValueError(f"Wan-Move tracks.npy must be [1, F, N, 2]; got {list(tracks.shape)}")
        tracks = tracks[0]
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"Wan-Move tracks.npy must be [1, F, N, 2]; got {list(tracks.shape)}")
    if vis_path.is_file():
        vis = np.load(vis_path, allow_pickle=False)
        vis = vis[0] if vis.ndim == 3 else vis
    else:
        vis = np.ones(tracks.shape[:2], bool)
    return Trajectory(tracks.astype(np.float32), vis.astype(bool), fps, width, height)


def to_wan_move(traj: Trajectory, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "tracks.npy", traj.tracks[None].astype(np.float32))
    np.save(folder / "visibility.npy", traj.visible[None])
