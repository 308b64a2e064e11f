"""The project's exceptions, one family: `except StreamerError` catches every bad input.

    StreamerError(ValueError)          root (streamer.models.errors, so models/ can raise it too)
    ├── CheckpointError                weights, configs, LoRA, VAE, text encoder files
    ├── InputError                     command-line numbers and names, prompts, sizes
    ├── TrackFileError                 trajectory files and their fields
    ├── OutputError                    output paths that cannot be written (kept frames are named)
    └── ResourceError                  a stream that cannot fit the device's memory (what to lower)

Messages are one line that names the field and the allowed range; the CLI prints them as
`streamer <command>: error: <message>` with exit code 2.
"""

from __future__ import annotations

from streamer.models.errors import CheckpointError, StreamerError

__all__ = ["CheckpointError", "InputError", "OutputError", "ResourceError", "StreamerError", "TrackFileError"]


class InputError(StreamerError):
    """A command-line or API value outside what is possible (a zero chunk, an infinite length, ...)."""


class TrackFileError(StreamerError):
    """A trajectory file that cannot be read or whose fields have the wrong type, shape or range."""


class OutputError(StreamerError):
    """An output that cannot be written (read-only folder, full disk, an input's own path)."""


class ResourceError(StreamerError):
    """A stream whose buffers cannot fit the free memory of its device; the message says what to lower."""
