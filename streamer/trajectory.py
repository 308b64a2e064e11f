"""Trajectories: the one internal format, plus Wan-Move and ATI-style import/export.

Inside the project a trajectory is float32 `tracks[T, N, 2]` (x, y) in pixels of the output
frame, `visible[T, N]`, the frame rate and the frame size (DESIGN section 6). Everything that
reads a file goes through `Trajectory.validate` and the field checks below, which raise a
`TrackFileError` (a `ValueError`) naming the field, so a malformed upload fails at load time
rather than deep inside a stream, and a value of the wrong type is refused, never coerced.

Files are read only when they are regular files of at most `MAX_FILE_BYTES` (checked before
opening: a FIFO would block forever, `/dev/zero` never ends), JSON nesting is bounded, and
`.npy`/`.npz` are read without pickles.

Formats:
- own: `.npz` (tracks, visible, fps, width, height) or `.json` ({"tracks": [[[x, y], ...], ...],
  "visible": ..., "fps", "width", "height"});
- Wan-Move: a folder (or two paths) with `tracks.npy` [1, F, N, 2] and `visibility.npy` [1, F, N]
  (or [F, N]); Wan-Move has no frame size or fps in the files, so they are arguments;
- ATI-style JSON: a list of tracks, each a list of points `[x, y]` or `{"x":..,"y":..,"visible":..}`
  one per frame, optionally wrapped as {"tracks": [...], "width", "height", "fps"}.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import TrackFileError

MAX_TRACKS = 16          # the track-ID embedding gives each track its own code; more than this is refused
OUTSIDE_MARGIN = 1.0     # points may leave the frame (entering/leaving sprites) by up to this x frame size
MAX_FILE_BYTES = 64 << 20  # 64 MiB: about 2 hours of 16 tracks at 16 fps in JSON; larger files are refused
MAX_FRAME_SIZE = 1 << 16   # width / height of the frame the points are in
MAX_FPS = 1000.0
MAX_HOURS = 24.0           # how long tracks may last: resampling to the video's fps builds every frame


@dataclass
class Trajectory:
    tracks: np.ndarray   # float32 [T, N, 2], (x, y) pixels of the output frame
    visible: np.ndarray  # bool [T, N]
    fps: float = 16.0
    width: int = 128
    height: int = 128
    # Repeat the paths from their start forever (`looping()`): frame(i) reads frame i mod T, so a
    # loop costs nothing per video frame however long the video.
    loop: bool = False

    def __post_init__(self) -> None:
        self.tracks = np.asarray(self.tracks, dtype=np.float32)
        self.visible = np.asarray(self.visible).astype(bool)
        self.validate()

    @property
    def num_frames(self) -> int:
        """Frames stored (one pass of the path, also when looping)."""
        return self.tracks.shape[0]

    @property
    def num_tracks(self) -> int:
        return self.tracks.shape[1]

    def validate(self) -> None:
        """Raises TrackFileError naming the first field out of shape, type or range."""
        t = self.tracks
        if t.ndim != 3 or t.shape[-1] != 2:
            raise TrackFileError(f"tracks must have shape [T, N, 2]; got {list(t.shape)}")
        if t.shape[0] < 1:
            raise TrackFileError("trajectory has no frames")
        if t.shape[1] > MAX_TRACKS:
            raise TrackFileError(f"too many tracks: {t.shape[1]} (at most {MAX_TRACKS})")
        if self.visible.shape != t.shape[:2]:
            raise TrackFileError(f"visible must have shape {list(t.shape[:2])} (frames, tracks); got {list(self.visible.shape)}")
        if not np.isfinite(t).all():
            bad = np.argwhere(~np.isfinite(t))[0]
            raise TrackFileError(f"track {bad[1]} has a NaN/inf point at frame {bad[0]}")
        self.width = _size_field("width", self.width)
        self.height = _size_field("height", self.height)
        self.fps = _fps_field(self.fps)
        hours = (t.shape[0] - 1) / self.fps / 3600
        if hours > MAX_HOURS:  # a tiny fps: 20 frames at 1e-9 fps would resample to 3e11 video frames
            raise TrackFileError(f"the tracks last {hours:.3g} h ({t.shape[0]} frames at {self.fps:g} fps); at most "
                                 f"{MAX_HOURS:g} h are read (is fps in frames per second?)")
        mx, my = OUTSIDE_MARGIN * self.width, OUTSIDE_MARGIN * self.height
        far = (t[..., 0] < -mx) | (t[..., 0] > self.width + mx) | (t[..., 1] < -my) | (t[..., 1] > self.height + my)
        if far.any():
            f, n = np.argwhere(far)[0]
            raise TrackFileError(
                f"track {n} at frame {f} is at ({t[f, n, 0]:.1f}, {t[f, n, 1]:.1f}), far outside the "
                f"{self.width}x{self.height} frame (coordinates must be pixels of the output frame)")

    # ---- resampling -----------------------------------------------------------------------------
    def resized(self, width: int, height: int) -> Trajectory:
        """The same paths in another frame size (tracks scale with the frame)."""
        scale = np.array([width / self.width, height / self.height], dtype=np.float32)
        return Trajectory(self.tracks * scale, self.visible, self.fps, width, height, self.loop)

    def resampled(self, fps: float) -> Trajectory:
        """The same motion at another frame rate: video frame k (time k / fps) takes the position at
        that time, linearly interpolated between the two nearest stored frames, the way the browser's
        import turns a track into a timed stroke and samples it at the stream's fps (ui/strokes.py).
        A point is visible where both frames it is interpolated from are. The path keeps its duration:
        (T - 1) / self.fps seconds -> floor((T - 1) * fps / self.fps) + 1 frames."""
        fps = _fps_field(fps)
        if fps == self.fps:
            return self
        ratio = self.fps / fps                           # stored frames per video frame
        n = int(math.floor((self.num_frames - 1) / ratio + 1e-9)) + 1
        s = np.arange(n, dtype=np.float64) * ratio       # position in stored frames
        i0 = np.minimum(np.floor(s + 1e-9).astype(np.int64), self.num_frames - 1)
        i1 = np.minimum(i0 + 1, self.num_frames - 1)
        w = np.clip(s - i0, 0.0, 1.0)[:, None, None]
        tracks = (1 - w) * self.tracks[i0].astype(np.float64) + w * self.tracks[i1].astype(np.float64)
        visible = self.visible[i0] & np.where(w[:, :, 0] > 1e-9, self.visible[i1], True)
        return Trajectory(tracks.astype(np.float32), visible, fps, self.width, self.height, self.loop)

    def looping(self) -> Trajectory:
        """The paths repeated from their start forever, computed per frame on demand (no copy)."""
        return Trajectory(self.tracks, self.visible, self.fps, self.width, self.height, loop=True)

    def looped(self, num_frames: int) -> Trajectory:
        """The paths repeated from their start until `num_frames`, as arrays (prefer `looping()` for
        streams: this one costs memory per video frame)."""
        if num_frames < 1:
            raise TrackFileError("a looped trajectory needs at least one frame")
        idx = np.arange(num_frames) % self.num_frames
        return Trajectory(self.tracks[idx], self.visible[idx], self.fps, self.width, self.height)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Points and visibility at video frame i; past the end the sprites are gone (invisible),
        unless the trajectory loops."""
        if self.loop and i >= 0:
            i %= self.num_frames
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
        """Own .npz/.json, ATI-style .json, or a Wan-Move folder / tracks.npy (kw: width, height, fps:
        used where the file does not say). Raises TrackFileError."""
        path = Path(path)
        if not path.exists():
            raise TrackFileError(f"no trajectory file at {path}")
        if path.is_dir() or path.name == "tracks.npy":
            return from_wan_move(path, **kw)
        if path.suffix == ".npz":
            return _from_npz(read_bounded(path), path)
        if path.suffix == ".json":
            try:
                data = json.loads(read_bounded(path).decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TrackFileError(f"{path}: not valid JSON ({e})") from None
            except RecursionError:
                raise TrackFileError(f"{path}: JSON nested too deeply") from None
            try:
                return from_json(data, **kw)
            except TrackFileError as e:
                raise TrackFileError(f"{path}: {e}") from None
        raise TrackFileError(f"{path}: unknown trajectory file type {path.suffix!r} (.npz, .json, or Wan-Move tracks.npy)")


# ---- reading files safely -------------------------------------------------------------------------
def read_bounded(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Checked on the link's target before it
    is opened: FIFOs (which block) and devices such as /dev/zero (which never end) are refused."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise TrackFileError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise TrackFileError(f"{path}: not a regular file (FIFOs, devices and sockets are refused)")
    if st.st_size > limit:
        raise TrackFileError(f"{path}: {st.st_size} bytes; trajectory files are at most {limit} bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since stat
    except OSError as e:
        raise TrackFileError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise TrackFileError(f"{path}: more than {limit} bytes; trajectory files are at most {limit} bytes")
    return data


def _numpy_error(path: Path, kind: str, e: Exception) -> TrackFileError:
    """One line for a .npy/.npz numpy cannot read: numpy's own advice on pickles (allow_pickle=) is
    nothing a user of this program can act on."""
    if "Object arrays cannot be loaded" in str(e):
        return TrackFileError(f"{path}: holds pickled (object) arrays, which are never loaded; save plain numeric arrays")
    return TrackFileError(f"{path}: not a readable {kind} ({e})")


def _from_npz(data: bytes, path: Path) -> Trajectory:
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a zip archive, as numpy tells; else it tries a pickle
        raise TrackFileError(f"{path}: not an .npz file (an .npz is a zip archive of arrays)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as d:
            arrays = {k: d[k] for k in ("tracks", "visible", "fps", "width", "height") if k in d.files}
    except Exception as e:  # noqa: BLE001  as _load_npy: a member's corrupt header raises what its parser does
        raise _numpy_error(path, ".npz", e) from None
    missing = [k for k in ("tracks", "visible", "fps", "width", "height") if k not in arrays]
    if missing:
        raise TrackFileError(f"{path}: missing array {missing[0]!r} (expected tracks, visible, fps, width, height)")
    try:
        return Trajectory(_numeric_array("tracks", arrays["tracks"]), _visible_array(arrays["visible"]),
                          _scalar_array("fps", arrays["fps"]), _scalar_array("width", arrays["width"]),
                          _scalar_array("height", arrays["height"]))
    except TrackFileError as e:
        raise TrackFileError(f"{path}: {e}") from None


# ---- field checks ---------------------------------------------------------------------------------
def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _size_field(name: str, value: object) -> int:
    """width / height: a whole number in 1..MAX_FRAME_SIZE (an integral float such as 128.0 is accepted)."""
    if not _is_number(value) or not math.isfinite(value) or value != int(value):
        raise TrackFileError(f"{name} must be a whole number of pixels, not {value!r}")
    if not 0 < value <= MAX_FRAME_SIZE:
        raise TrackFileError(f"{name} must be in 1..{MAX_FRAME_SIZE}, got {value!r}")
    return int(value)


def _fps_field(value: object) -> float:
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= MAX_FPS:
        raise TrackFileError(f"fps must be a number in (0, {MAX_FPS:g}], not {value!r}")
    return float(value)


def _scalar_array(name: str, a: np.ndarray) -> float | int:
    """An .npz scalar field: a 0-d (or one-element) numeric array."""
    if a.size != 1 or a.ndim > 1 or a.dtype.kind not in "iuf":
        raise TrackFileError(f"{name} must be one number; got a {a.dtype} array of shape {list(a.shape)}")
    value = a.reshape(()).item()
    return _size_field(name, value) if name in ("width", "height") else _fps_field(value)


def _numeric_array(name: str, a: object) -> np.ndarray:
    """A rectangular array of real numbers (no strings, booleans, nulls or ragged lists)."""
    try:
        arr = np.asarray(a)
    except ValueError:
        raise TrackFileError(f"{name} is not a rectangular array (rows of different lengths)") from None
    if arr.dtype.kind not in "iuf":
        raise TrackFileError(f"{name} must hold numbers only; got {arr.dtype.name} values")
    return arr


def _visible_array(a: object) -> np.ndarray:
    """Visibility: booleans, or numbers that are exactly 0 or 1."""
    try:
        arr = np.asarray(a)
    except ValueError:
        raise TrackFileError("visible is not a rectangular array (rows of different lengths)") from None
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
        raise TrackFileError("visible must hold true/false (or 0/1) only")
    return arr.astype(bool)


def from_json(data: object, width: int | None = None, height: int | None = None, fps: float | None = None) -> Trajectory:
    """Own JSON ({"tracks": [T][N][2], "visible": [T][N]}) or ATI-style point lists ([N][T] points).
    width / height / fps: used when the data does not give them. Raises TrackFileError."""
    meta = data if isinstance(data, dict) else {}
    width = _size_field("width", meta["width"] if "width" in meta else (width or 128))
    height = _size_field("height", meta["height"] if "height" in meta else (height or 128))
    fps = _fps_field(meta["fps"] if "fps" in meta else (fps or 16.0))
    if isinstance(data, dict) and "visible" in data and "tracks" in data:  # own layout, frame-major
        return Trajectory(_numeric_array("tracks", data["tracks"]), _visible_array(data["visible"]), fps, width, height)
    if isinstance(data, dict):
        if "tracks" not in data:
            raise TrackFileError(f'a JSON object of tracks needs a "tracks" key (it has: {", ".join(list(map(str, data))[:8]) or "none"})')
        try:
            return _from_ati(data["tracks"], '"tracks"', fps, width, height)
        except TrackFileError as e:  # say which of the two layouts was read: the keys decide it, not the shape
            raise TrackFileError(f'{e}; read as ATI-style, "tracks" [track][frame] points, as the object has no '
                                 '"visible" (the own layout, "tracks" [frame][track][x, y], comes with "visible")') from None
    return _from_ati(data, "ATI-style JSON", fps, width, height)


def _from_ati(lists: object, what: str, fps: float, width: int, height: int) -> Trajectory:
    """ATI-style point lists, [track][frame] points `[x, y]`, `[x, y, visible]` or {"x", "y", "visible"};
    `what` names them in errors. Raises TrackFileError."""
    if not isinstance(lists, list) or not lists:
        kind = type(lists).__name__
        got = "an empty list" if isinstance(lists, list) else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        raise TrackFileError(f"{what} must be a non-empty list of tracks, each a list of per-frame points "
                             f"(got {got})")
    if len(lists) > MAX_TRACKS:
        raise TrackFileError(f"too many tracks: {len(lists)} (at most {MAX_TRACKS})")
    lengths = {len(tr) if isinstance(tr, list) else -1 for tr in lists}
    if -1 in lengths:
        raise TrackFileError("each ATI-style track must be a list of points")
    if len(lengths) != 1:
        raise TrackFileError(f"ATI-style tracks must all have the same number of frames; got lengths {sorted(lengths)}")
    n_frames = lengths.pop()
    if n_frames < 1:
        raise TrackFileError("trajectory has no frames")
    tracks = np.zeros((n_frames, len(lists), 2), np.float32)
    visible = np.ones((n_frames, len(lists)), bool)
    for n, tr in enumerate(lists):
        for f, p in enumerate(tr):
            if isinstance(p, dict):
                x, y, vis = p.get("x"), p.get("y"), p.get("visible", True)
            elif isinstance(p, list) and len(p) in (2, 3):
                x, y, vis = p[0], p[1], p[2] if len(p) > 2 else True
            else:
                x = y = vis = None
            if not (_is_number(x) and _is_number(y)):
                raise TrackFileError(f"track {n}, frame {f}: point {p!r} is not [x, y] or {{'x':..,'y':..}} with numbers")
            if not (isinstance(vis, bool) or vis in (0, 1)):
                raise TrackFileError(f"track {n}, frame {f}: visible must be true/false, not {vis!r}")
            with np.errstate(over="ignore"):  # a point past float32's range becomes inf, refused below
                tracks[f, n] = (x, y)
            visible[f, n] = bool(vis)
    return Trajectory(tracks, visible, fps, width, height)


def to_ati_json(traj: Trajectory) -> dict:
    return {
        "width": traj.width, "height": traj.height, "fps": traj.fps,
        "tracks": [[{"x": round(float(traj.tracks[f, n, 0]), 3), "y": round(float(traj.tracks[f, n, 1]), 3),
                     "visible": bool(traj.visible[f, n])} for f in range(traj.num_frames)]
                   for n in range(traj.num_tracks)],
    }


def _load_npy(path: Path) -> np.ndarray:
    data = read_bounded(path)
    if not data.startswith(b"\x93NUMPY"):  # numpy would try anything else as a pickle
        raise TrackFileError(f"{path}: not an .npy file (it lacks the .npy header)")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001  a corrupt header raises what its parser does (tokenize, SyntaxError, ...)
        raise _numpy_error(path, ".npy", e) from None


def from_wan_move(path: str | Path, visibility: str | Path | None = None, width: int = 832, height: int = 480,
                  fps: float = 16.0) -> Trajectory:
    """Wan-Move `tracks.npy` [1, F, N, 2] (+ `visibility.npy` [1, F, N]); path: the folder or tracks.npy."""
    path = Path(path)
    tracks_path = path / "tracks.npy" if path.is_dir() else path
    vis_path = Path(visibility) if visibility else tracks_path.with_name("visibility.npy")
    if not tracks_path.exists():
        raise TrackFileError(f"no Wan-Move tracks.npy at {tracks_path}")
    tracks = _numeric_array(f"{tracks_path} values", _load_npy(tracks_path))
    if tracks.ndim == 4:
        if tracks.shape[0] != 1:
            raise TrackFileError(f"{tracks_path}: Wan-Move tracks.npy must be [1, F, N, 2]; got {list(tracks.shape)}")
        tracks = tracks[0]
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise TrackFileError(f"{tracks_path}: Wan-Move tracks.npy must be [1, F, N, 2]; got {list(tracks.shape)}")
    if vis_path.exists():
        vis = _load_npy(vis_path)
        vis = vis[0] if vis.ndim == 3 else vis
        try:
            vis = _visible_array(vis)
        except TrackFileError as e:
            raise TrackFileError(f"{vis_path}: {e}") from None
    else:
        vis = np.ones(tracks.shape[:2], bool)
    return Trajectory(tracks.astype(np.float32), vis, fps, width, height)


def to_wan_move(traj: Trajectory, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "tracks.npy", traj.tracks[None].astype(np.float32))
    np.save(folder / "visibility.npy", traj.visible[None])
