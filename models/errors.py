"""The root of the project's exceptions, defined here so that models/ needs nothing from the engine.

`StreamerError` subclasses `ValueError` (bad input is a value problem, and callers that already catch
`ValueError` keep working). Every message is one line naming the field and what is allowed; the CLI
prints it as `streamer <command>: error: <message>` and exits with code 2. The engine's own subclasses live in
`streamer.errors`.
"""

from __future__ import annotations


class StreamerError(ValueError):
    """Bad input or an impossible request: the message names the field and the allowed range."""


class CheckpointError(StreamerError):
    """A checkpoint (or LoRA, VAE, text encoder) that cannot be read or does not fit the model."""
