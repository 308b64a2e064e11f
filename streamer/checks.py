"""Checks of command-line values and paths, made where the value enters (argparse types, output paths).

Each check raises `argparse.ArgumentTypeError` (inside argparse: one usage line plus one error
line naming the flag, exit code 2) or one of the project's own errors (`streamer.errors`), never
lets an impossible value reach the stream, and never changes a value silently.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from streamer.errors import InputError, OutputError

SEED_MAX = 2**63 - 1     # torch.Generator.manual_seed takes a signed 64-bit value
STEPS_MAX = 1000         # the sampler's step grid has 1000 training timesteps
HIDDEN_CHUNKS_MAX = 8     # chunks made before the first shown one (StreamConfig.hidden_chunks): each delays it
SIZE_MAX = 1 << 16       # H.264 and the VAE stop far below this; memory admission refuses earlier


def hidden_chunks(value: object) -> int:
    """A model's or recipe's hidden chunk count (`StreamConfig.hidden_chunks`), checked: a whole
    number from 0 to HIDDEN_CHUNKS_MAX. Raises ValueError naming what it got otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= HIDDEN_CHUNKS_MAX:
        return value
    raise ValueError(f"hidden_chunks must be a whole number from 0 to {HIDDEN_CHUNKS_MAX}; got {value!r}")


def drift_anchor(value: object) -> bool:
    """A model's or recipe's drift anchor setting (`StreamConfig.drift_anchor`), checked: true or
    false. Raises ValueError naming what it got otherwise (a string "false" would read as on)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"drift_anchor must be true or false; got {value!r}")


def int_in(low: int, high: int | None = None, what: str = "a whole number") -> callable:
    """argparse type: an int in [low, high] (high None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if value < low or (high is not None and value > high):
            rng = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def positive_seconds(text: str) -> float:
    """argparse type: a finite duration > 0 (refuses 0, negatives, inf and nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: any finite float (refuses inf and nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def video_size(text: str) -> tuple[int, int]:
    """argparse type: `WxH` with 0 < W, H <= 65536 (multiples of the model's stride are checked later)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 832x480, not {text!r}") from None
    if not (0 < w <= SIZE_MAX and 0 < h <= SIZE_MAX):
        raise argparse.ArgumentTypeError(f"width and height must be in 1..{SIZE_MAX}, got {w}x{h}")
    return w, h


def device(text: str) -> str:
    """argparse type: `cpu`, `cuda` or `cuda:N`, refused when this machine has no such device."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device (torch sees none); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported (use cpu, cuda or cuda:N)")
    return text


# ---- paths ----------------------------------------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuse an output path that is one of the inputs (or a file inside an input folder), which
    writing the video would destroy. `inputs`: (flag, path or None) pairs."""
    out = Path(out)
    for flag, path in inputs:
        if not path:
            continue
        path = Path(path)
        inside = path.is_dir() and out.resolve().is_relative_to(path.resolve()) and out.resolve() != path.resolve()
        if _same(out, path) or out.resolve() == path.resolve() or (inside and out.exists()):
            raise OutputError(f"--out {out} is the {flag} input; writing there would destroy it (choose another path)")


def check_writable_file(out: str | os.PathLike) -> Path:
    """An output file path that can be created: a name ending in .mp4 (or a device such as
    /dev/null), not a folder, its parent a writable folder (created when missing). Probes by
    creating and removing a hidden file, which also catches read-only and immutable folders that
    permission bits alone do not show (root ignores them). Raises OutputError (one line)."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give a file name such as {out / 'video.mp4'}")
    if out.exists() and stat.S_ISCHR(out.stat().st_mode):
        return out  # a device such as /dev/null or /dev/full: written to, and write errors are reported
    if out.exists() and not stat.S_ISREG(out.stat().st_mode):
        raise OutputError(f"--out {out} exists and is not a regular file")
    if out.suffix.lower() != ".mp4":  # the writer makes MP4 (H.264); another name would hide what the file is
        # ".mp4" alone is a hidden file with no suffix: suggesting ".mp4.mp4" would be no help
        hidden = not out.suffix and out.name.startswith(".")
        raise OutputError(f"--out {out}: the video is written as MP4; give a name ending in .mp4, such as "
                          f"{'video.mp4' if hidden else out.with_suffix('.mp4').name}")
    check_writable_folder(out.parent, flag="--out", create=True, what=f"the folder of {out}")
    return out


# Folders check_writable_folder made, outermost first: a command that then fails on its other inputs
# removes them again if still empty (`remove_made_folders`), so a refused command leaves nothing behind.
_made_folders: list[Path] = []


def check_writable_folder(folder: str | os.PathLike, flag: str = "--out", create: bool = True,
                          what: str | None = None) -> Path:
    """A folder that exists (or is created) and accepts new files. The folders it creates are noted
    for `remove_made_folders`. Raises OutputError (one line)."""
    folder = Path(folder)
    what = what or str(folder)
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag}: {parent} is a file, so {what} cannot be a folder")
            break
        missing.append(parent)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{flag}: cannot create {what} ({e.strerror or e})") from None
        _made_folders.extend(m.absolute() for m in reversed(missing))  # a later chdir must not redirect them
    if not folder.is_dir():
        raise OutputError(f"{flag}: {what} does not exist")
    probe = folder / f".streamer-write-test-{os.getpid()}"
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{flag}: cannot write in {what} ({e.strerror or e})") from None
    return folder


def remove_made_folders() -> None:
    """Remove the folders `check_writable_folder` made that are still empty, innermost first: what a
    command refused after checking its --out leaves behind is what was there before."""
    while _made_folders:
        folder = _made_folders.pop()
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            pass


def forget_made_folders() -> None:
    """A command is over (done, or its folders removed): the next one in this process (a test, the
    UI's server) starts with none noted."""
    _made_folders.clear()


def check_input_path(path: str | os.PathLike, flag: str) -> Path:
    """An input that may be a file or a folder (a checkpoint, a VAE, a text encoder) and must exist.
    Raises InputError naming the flag."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such file or folder")
    return path


def check_input_file(path: str | os.PathLike, flag: str) -> Path:
    """An input that must be a readable regular file (not a folder, FIFO or device)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise InputError(f"{flag} {path} is not a regular file (FIFOs and devices are refused)")
    return path
