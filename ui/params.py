"""Checks of what a page or an API client sends, shared by both: one line naming the field and the
allowed range (InputError), never a silent clamp, never a server path or a library's own words."""

from __future__ import annotations

import math
import re
from pathlib import Path

from streamer.errors import InputError
from streamer.policies import POLICIES, make_policy, parse_policy_args, policy_knobs

SEED_MAX = 2**63 - 1
STEPS_MAX = 8          # Self-Forcing samples with 4; more gives little and costs time
SIZE_MAX = 4096        # pixels per side; memory admission refuses what does not fit long before
PROMPT_MAX = 2000      # characters
GUIDANCE_MAX = 20.0    # text CFG scales in use are 1-10 (Wan's default is 5)


def whole(name: str, value, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]: ints, integral floats and digit strings pass; anything else
    (1.5, 'abc', True, NaN, 1e20) is an InputError naming `name` and the range."""
    rng = f"a whole number from {lo} to {hi}"
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be {rng}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d{1,30}", text):
            raise InputError(f"{name} must be {rng}; got {value[:40]!r}")
        value = int(text)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InputError(f"{name} must be {rng}; got {value!r}")
        value = int(value)
    elif not isinstance(value, int):
        raise InputError(f"{name} must be {rng}")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be {rng}; got {value}")
    return value


def number(name: str, value, lo: float, hi: float) -> float:
    """`value` as a finite float in [lo, hi]: ints, floats and numeric strings pass; anything else
    (True, 'abc', NaN, inf) is an InputError naming `name` and the range."""
    rng = f"a number from {lo:g} to {hi:g}"
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float, str)):
        raise InputError(f"{name} must be {rng}")
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"{name} must be {rng}; got {str(value)[:40]!r}") from None
    if not (math.isfinite(out) and lo <= out <= hi):
        raise InputError(f"{name} must be {rng}; got {str(value)[:40]}")
    return out


def prompt_text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError("the prompt is empty: describe the scene first")
    if len(value) > PROMPT_MAX:
        raise InputError(f"the prompt has {len(value)} characters (at most {PROMPT_MAX})")
    return value.strip()


def knobs(policy: str, value, chunk_frames: int = 3, check: bool = True) -> dict:
    """Policy knobs from 'k=v k=v' text (commas allowed) or a dict; whole-number knobs are checked as
    whole numbers. The policy itself then refuses impossible combinations (PolicyError) unless
    `check` is False (knobs still to be laid over others: check the result)."""
    if value is None or value == "":
        args: dict = {}
    elif isinstance(value, dict):
        args = dict(value)
    elif isinstance(value, str):
        args = parse_policy_args(value.replace(",", " ").split())
    else:
        raise InputError("policy knobs must be 'k=v' text or an object")
    if policy not in POLICIES:
        raise InputError(f"unknown cache policy {str(policy)[:40]!r} (choose from {', '.join(POLICIES)})")
    defaults = policy_knobs(policy)
    for k, v in list(args.items()):
        if isinstance(defaults.get(k), int) and not isinstance(defaults.get(k), bool):
            args[k] = whole(f"knob {k}", v, 0, 10**9)
    if check:
        make_policy(policy, args, chunk=chunk_frames)
    return args


def size(value) -> tuple[int, int] | None:
    """'WxH', [W, H] or None (the model's native size)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\S+)\s*[xX]\s*(\S+)\s*", value)
        if not m:
            raise InputError(f"size must look like 128x128; got {value[:40]!r}")
        value = [m.group(1), m.group(2)]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError("size must be 'WxH' or [width, height]")
    return whole("width", value[0], 1, SIZE_MAX), whole("height", value[1], 1, SIZE_MAX)


_LIBRARY_DETAIL = re.compile(r"\s*\([^()]*?(?:\([^()]*\)[^()]*?)*(?:pickle|codec|Errno|unpack|Traceback|allow_).*\)")


def upload_error(error: Exception, paths: list[Path]) -> str:
    """An uploaded file's error as the user should read it: the file's own name for the server's temp
    path, no library detail (pickle advice, UTF-8 codec positions)."""
    text = str(error)
    for p in sorted(paths, key=lambda p: -len(str(p))):
        text = text.replace(str(p), p.name)
    text = re.sub(r"(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)", r"\1", text)  # any other absolute path: its name
    text = _LIBRARY_DETAIL.sub("", text)
    # the CLI's words say what the format is (streamer.trajectory); an upload's, that it is not a trajectory
    text = re.sub(r"not (?:an \.(npz|npy) file \([^()]*\)|a readable \.(npz|npy))",
                  lambda m: f"not a trajectory .{m.group(1) or m.group(2)} file", text)
    text = text.replace("not valid JSON", "not a JSON text file")
    text = re.sub(r"'(\w+) is not a file in the archive'", r"'\1'", text)
    return " ".join(text.split())[:300]
