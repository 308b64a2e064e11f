"""Start images and start videos: read them safely, fit them to the stream's size, encode them.

The size rule, the same everywhere (CLI `--image` and `--continue`, the browser's start image,
tracks drawn on the image): **resize keeping the aspect ratio so the picture covers the video
size, then centre-crop to it** (nothing is stretched, no bars are added; what sticks out on the
longer side is cut equally on both sides). `cover_crop` gives the mapping, `fit_image` applies it
to pixels and `fit_points` to points drawn on the original picture.

Reading an image (PNG, JPEG, WebP; whatever Pillow opens) is refused in one line, as an
`InputError`, for: a missing, non-regular or empty (0-byte) file, a file over `MAX_FILE_BYTES`, a
file that is not an image or is truncated or corrupt, a zero-size picture, and a picture larger
than `MAX_SIDE` or `MAX_PIXELS` (read from the header, so a 20000x20000 PNG is refused before a
single pixel is decoded). Alpha and grayscale pictures are converted to RGB (alpha composited
over black) and a one-line note says so. JPEG EXIF orientation is applied.

Videos (`read_video`) are read with PyAV, so any file FFmpeg decodes works (not only our own
mp4s); a file with no video stream, or one that cannot be decoded, is one line.
"""

from __future__ import annotations

import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.errors import InputError

MAX_FILE_BYTES = 256 << 20    # an image file over 256 MiB is refused before opening
MAX_SIDE = 16384              # pixels per side (WebP's own limit; JPEG's is 65535)
MAX_PIXELS = 64 << 20         # 64 Mpx decoded = 192 MiB of RGB: far beyond any video size we stream

# Pillow modes that carry alpha, and grayscale ones (converted to RGB with a note)
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_GRAY_MODES = {"L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"}


@dataclass
class StartImage:
    """An image fitted to the stream: uint8 pixels [H, W, 3] of the video size, plus what was done."""

    pixels: np.ndarray
    source_size: tuple[int, int]          # (width, height) of the file's picture (after EXIF rotation)
    notes: list[str] = field(default_factory=list)
    name: str = ""                        # how messages name it, e.g. "--image start.png"


# ---- the size rule --------------------------------------------------------------------------------
def cover_crop(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[float, float, float]:
    """The size rule as numbers: a source point (x, y) lands at (x * scale - off_x, y * scale - off_y)
    in the video. scale = max(dst_w / src_w, dst_h / src_h) (the picture covers the video), and the
    offsets centre the crop. Returns (scale, off_x, off_y), pixels."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return scale, (src_w * scale - dst_w) / 2, (src_h * scale - dst_h) / 2


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 video frames [n, h, w, 3] -> [n, height, width, 3] by the size rule (each as
    `fit_image`); the same array when the size is already right."""
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(fit_image(Image.fromarray(f), width, height)) for f in frames])


def fit_image(img, width: int, height: int):
    """A Pillow RGB image -> a width x height Pillow image by the size rule (cover, centre-crop).
    Done in one Lanczos resample of the centred source box that has the video's aspect ratio, which
    is the same as resizing to cover and cropping, without an intermediate image."""
    from PIL import Image

    if img.size == (width, height):
        return img
    scale, ox, oy = cover_crop(img.width, img.height, width, height)
    box = (ox / scale, oy / scale, (ox + width) / scale, (oy + height) / scale)
    return img.resize((width, height), Image.Resampling.LANCZOS, box=box)


def fit_points(points: np.ndarray, src_w: int, src_h: int, dst_w: int, dst_h: int) -> np.ndarray:
    """Points [..., 2] (x, y) in pixels of a src_w x src_h picture -> pixels of the dst_w x dst_h video
    cut from it by the size rule (so tracks drawn on a start image stay on what they were drawn on)."""
    scale, ox, oy = cover_crop(src_w, src_h, dst_w, dst_h)
    return (np.asarray(points, np.float32) * scale - np.array([ox, oy], np.float32)).astype(np.float32)


# ---- images ---------------------------------------------------------------------------------------
def check_file(path: Path, what: str, limit: int) -> int:
    """The size of `path` in bytes when it is a regular, non-empty file of at most `limit` bytes;
    else InputError naming `what` (missing, a folder, a FIFO or device, empty, too large)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise InputError(f"{what} {path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} {path} is a folder; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is not a regular file (FIFOs and devices are refused)")
    if st.st_size == 0:
        raise InputError(f"{what} {path} is an empty file (0 bytes)")
    if st.st_size > limit:
        raise InputError(f"{what} {path}: {st.st_size} bytes; at most {limit} bytes are read")
    return st.st_size


def load_image(path: str | os.PathLike, width: int, height: int, what: str = "--image") -> StartImage:
    """Read an image file and fit it to width x height by the size rule.

    Returns a StartImage (pixels uint8 [height, width, 3]); its `notes` say what was converted.
    Raises InputError (one line, naming `what`) as the module docstring lists; the picture's size
    is checked from the header before any pixel is decoded.
    """
    return fit_start_image(read_image(path, what), width, height)


def read_image(path: str | os.PathLike, what: str = "--image") -> StartImage:
    """Read an image file as it is: a StartImage whose pixels are uint8 [h, w, 3] at the file's own
    size (`fit_start_image` applies the size rule). Raises InputError as `load_image`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    check_file(path, what, MAX_FILE_BYTES)
    try:
        with Image.open(path) as img:  # reads the header only
            w, h = img.size
            if w <= 0 or h <= 0:
                raise InputError(f"{what} {path}: the picture is {w}x{h} pixels (zero size)")
            if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
                raise InputError(f"{what} {path}: the picture is {w}x{h} pixels; at most {MAX_SIDE} per side "
                                 f"and {MAX_PIXELS >> 20} Mpx are read (scale it down first)")
            notes = []
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"{what} {path} holds {img.n_frames} frames (animated); the first is used")
            img.load()  # decodes now: truncated or corrupt data fails here, inside this try
            img = ImageOps.exif_transpose(img)
            img, note = _to_rgb(img)
    except InputError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own header check, beyond ours (> 179 Mpx)
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise InputError(f"{what} {path}: the picture has {size}; at most {MAX_SIDE} per side and "
                         f"{MAX_PIXELS >> 20} Mpx are read (scale it down first)") from None
    except UnidentifiedImageError:
        if _png_zero_size(path):  # Pillow refuses a 0-pixel PNG header as "not an image"
            raise InputError(f"{what} {path}: the picture has zero size (0 pixels wide or high)") from None
        raise InputError(f"{what} {path} is not an image Pillow can read (PNG, JPEG or WebP)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's truncated / corrupt-data errors
        raise InputError(f"{what} {path}: corrupt or truncated image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if note:
        notes.append(f"{what} {path}: {note}")
    return StartImage(pixels=np.asarray(img, dtype=np.uint8), source_size=img.size, notes=notes,
                      name=f"{what} {path}")


def fit_start_image(image: StartImage, width: int, height: int) -> StartImage:
    """A StartImage at any size -> the same picture at width x height by the size rule (a note
    says when it was resized)."""
    from PIL import Image

    w, h = image.pixels.shape[1], image.pixels.shape[0]
    if (w, h) == (width, height):
        return image
    pixels = np.asarray(fit_image(Image.fromarray(image.pixels), width, height), dtype=np.uint8)
    note = (f"{image.name or 'the picture'} is {w}x{h}: resized to cover {width}x{height} and centre-cropped "
            "(aspect kept)")
    return StartImage(pixels=pixels, source_size=image.source_size, notes=[*image.notes, note], name=image.name)


def _png_zero_size(path: Path) -> bool:
    """A PNG whose header (IHDR) gives a width or height of 0."""
    with open(path, "rb") as f:
        head = f.read(24)
    return (len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
            and (int.from_bytes(head[16:20], "big") == 0 or int.from_bytes(head[20:24], "big") == 0))


def _to_rgb(img):
    """(RGB Pillow image, note or None). Alpha is composited over black; grayscale is repeated."""
    from PIL import Image

    mode = img.mode
    if mode == "P":  # palette: its transparency, if any, becomes an alpha channel
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode if img.mode == "RGBA" else "P"
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit / float gray: to 8 bits
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "F" and a.max() > 255 else (1.0 if mode == "F" and a.max() <= 1.0 else 255.0)
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    gray = mode in _GRAY_MODES
    if mode in _ALPHA_MODES or img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        rgb = Image.alpha_composite(black, rgba).convert("RGB")
        kind = "grayscale with alpha" if gray else "has an alpha channel"
        return rgb, f"{kind} ({mode}): converted to RGB, transparent parts composited over black"
    if gray:
        return img.convert("RGB"), f"grayscale ({mode}): converted to RGB"
    if img.mode != "RGB":  # CMYK, YCbCr, ...: converted silently, nothing is lost that a video keeps
        img = img.convert("RGB")
    return img, None


def to_video(frames: np.ndarray):
    """uint8 frames [N, H, W, 3] -> float tensor [1, 3, N, H, W] in [-1, 1] (what encoders take)."""
    import torch

    x = torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(3, 0, 1, 2)[None].float()
    return x / 127.5 - 1.0


def encode_frames(pipe, frames: np.ndarray):
    """uint8 frames [N, H, W, 3] (N = 1 + 4k, H and W the stream's size) -> clean normalised latents
    [1, C, 1 + k, H/8, W/8] on the pipeline's device: a Session's `start_latents`. Uses the model's
    own encoder (`pipe.decoder.encode`). Raises ValueError for a frame count the encoder cannot take."""
    import torch

    with torch.inference_mode():
        return pipe.decoder.encode(to_video(frames)).to(pipe.device, torch.float32)


# ---- videos ---------------------------------------------------------------------------------------
@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    codec: str


def open_video(path: str | os.PathLike, what: str = "--continue", picture_hint: str = "") -> VideoInfo:
    """The first video stream's size, frame rate and codec, from the container's header (and one
    decoded frame). Raises InputError for a missing/empty/non-regular file, a file FFmpeg cannot
    open, a still picture (PNG, JPEG, TIFF, ...: FFmpeg opens one as a one-frame video; an animated
    GIF or APNG is a video), one with no video stream, or one whose first frame does not decode.
    `picture_hint` ends the still picture's message (what to do with a picture instead)."""
    import av

    path = Path(path)
    check_file(path, what, 1 << 40)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{what} {path} has no video stream")
            # FFmpeg opens a picture as a one-frame video ("png_pipe", "jpeg_pipe", ..., or "image2")
            if container.format.name.endswith("_pipe") or container.format.name == "image2":
                raise InputError(f"{what} {path} is a still picture, not a video{picture_hint}")
            s = container.streams.video[0]
            rate = s.average_rate or s.guessed_rate or 0
            info = VideoInfo(width=s.codec_context.width, height=s.codec_context.height, fps=float(rate),
                             codec=s.codec_context.name)
            # a header can be guessed from garbage: one decoded frame proves it is a video, before any
            # note about its frame rate or size is printed or the model is loaded
            if next(container.decode(video=0), None) is None or info.width <= 0 or info.height <= 0:
                raise InputError(f"{what} {path} has no decodable video frame")
            return info
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"{what} {path} is not a video FFmpeg can read ({_reason(e)})") from None


def read_video(path: str | os.PathLike, what: str = "--continue") -> Iterator[np.ndarray]:
    """The first video stream's frames, one uint8 RGB array [H, W, 3] at a time, in display order
    (memory: one frame). Raises InputError as `open_video` does, and for data that stops decoding."""
    import av

    open_video(path, what)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{what} {path}: the video stops decoding ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    """FFmpeg's words for an error, without PyAV's "[Errno 1094995529]" (FFmpeg's tag as a number)
    and the path it repeats."""
    text = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else "")
    return text or type(e).__name__


def copy_video(path: str | os.PathLike, keep_last: int, sink: Callable[[np.ndarray], None],
               what: str = "--continue") -> tuple[int, np.ndarray]:
    """Pass every frame of the video at `path` to `sink` (uint8 [1, H, W, 3] each), keeping the last
    `keep_last` in memory. Returns (frames read, the kept frames uint8 [n, H, W, 3], n <= keep_last).
    Raises InputError for a video with no frame."""
    tail: deque[np.ndarray] = deque(maxlen=max(1, keep_last))
    count = 0
    for frame in read_video(path, what):
        sink(frame[None])
        tail.append(frame)
        count += 1
    if count == 0:
        raise InputError(f"{what} {path}: the video stream holds no frame")
    return count, np.stack(list(tail)[-keep_last:] if keep_last > 0 else [])


def start_frame_count(available: int, window_latents: int, rule) -> int:
    """How many of a video's last frames to encode for a continuation: the largest 1 + s*k count
    (s the frame rule's temporal stride) that fits both the video and `window_latents` latent frames
    (what the cache keeps as context beside the chunk being made). At least 1."""
    fit = rule.encodable(max(1, available))
    most = rule.video_frames(max(1, window_latents))  # 1 + s*(window_latents - 1)
    return max(1, min(fit, most))
