"""Drift anchor: hold a still background's latents at those of the stream's first chunk.

A causal video model rolled out on its own outputs drifts: each chunk continues a history that is
a little off, and the offset builds up. On the shipped world model the latents' mean moves away
from the true clip's by 0.02-0.09 (of a spread of 1) in several channels over the first five
chunks and then stays there: the night background settles about one grey level brighter than its
first frame, which is most of the ten-minute background change and almost all of the smear far
behind the sprite (docs/model_history.md, "After v13, part 3"). Training rounds against it took a
tenth off (parts 3-5 there).

The anchor corrects it at stream time. The last latent frame of the first chunk a stream makes is
its reference. In every later chunk, per channel and latent frame, the drift is the median over the
frame's cells of their difference from the reference, and it is taken off the background cells:
those whose difference, once the drift is off, is under `BACKGROUND_RMS` (RMS over channels). The
shift is made before the clean pass, so the KV cache, the decoder and the next chunk all see the
corrected latents, and the drift cannot build up.

Where the background stands still (the world model's scenes: a fixed camera over a static
texture), the median cell is background: a sprite covers far less than half the cells, so it
does not move the median. The sprite's own cells are left as the model drew them: shifted with the
background, a sprite's colour moves by the background's drift, and a prompt alone then finds its
sprite less often (a yellow square on stone 0.885 -> 0.826 of 20 s, an orange diamond on night 0.863
-> 0.763; background cells only: 0.879 and 0.857). On the world model a background cell's difference
from the reference is 0.10 (median) to 0.17 (75th percentile) once the drift is off, a sprite's
0.6-2 (the 90th to 99th percentile). A video with camera motion or lighting changes has no such
reference, so the anchor is off unless a model's own stream settings turn it on
(`StreamConfig.drift_anchor`; the shipped world model's do).

What the drift leaves is each cell's own change, and on a still background that is what a sprite
leaves behind, the tail right behind it (4-15 video frames after it passes) twice the
autoencoder's own, and the texture wandering a little. So the still cells, those whose difference
from the reference is under `HOLD_RMS` once the drift is off, are also moved `HOLD` of the way back
to it, each chunk (the hold). A trail is left as drawn while it is strong, then held back once it
fades under `HOLD_RMS`, instead of lingering. Over ten minutes of a tracked sprite this takes the background change from
1.50 to 1.03 grey levels (the autoencoder's own: 1.04) and the smear from 0.0044 to 0.0032
(docs/model_history.md, "After v15"). A prompt alone finds a faint sprite slightly less often
(white on sand); a `HOLD_RMS` of 0.5 cost it three times as much.

A prompt switch asks for a new scene: the world model changes its background over two to three
chunks after one (grass to sand, night to snow). So after a switch the anchor lets go, and
`SETTLE_CHUNKS` chunks later it takes that chunk's last latent frame as the new reference.
"""

from __future__ import annotations

import torch

# Chunks made after a prompt switch before the anchor takes its new reference: the last of them
# gives it. The world model's background reaches the new prompt's within 2-3 chunks of 3 latent
# frames (grass -> sand, night -> snow: frame means within 2 grey levels of where they settle).
SETTLE_CHUNKS = 3
# A cell is background when its difference from the reference, once the drift is off, is under this
# (RMS over channels, in the DiT's normalised latent units: a spread of about 1 per channel).
BACKGROUND_RMS = 0.5
# A background cell under HOLD_RMS is still: of its difference from the reference, once the drift is
# off, HOLD is taken off too, each chunk. What a sprite leaves behind fades below HOLD_RMS within a
# few chunks and is then held back instead of lingering; a faint sprite just drawn from a prompt
# alone (white on sand) sits near 0.3-0.5, so HOLD_RMS stays under it (0.5 lost it more often).
HOLD = 0.5
HOLD_RMS = 0.3


def median_offset(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per channel and latent frame, the median over the frame's cells of `latents - reference`.

    latents: [B, C, n, h, w]; reference: [B, C, 1, h, w] (one latent frame, broadcast over n).
    Returns float32 [B, C, n, 1, 1]. Raises ValueError for shapes that do not match."""
    if latents.ndim != 5 or reference.ndim != 5 or reference.shape[2] != 1 or \
            latents.shape[:2] != reference.shape[:2] or latents.shape[3:] != reference.shape[3:]:
        raise ValueError(f"drift anchor: latents {tuple(latents.shape)} and reference {tuple(reference.shape)} "
                         "must be [B, C, n, h, w] and [B, C, 1, h, w]")
    diff = latents.float() - reference.float()
    return diff.flatten(3).median(dim=3).values[..., None, None]


def residual(latents: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the anchor reads of `latents` [B, C, n, h, w] against `reference` [B, C, 1, h, w]: the
    drift (`median_offset`, [B, C, n, 1, 1]), each cell's difference from the reference once it is
    off (float32 [B, C, n, h, w]) and that difference's RMS over channels ([B, 1, n, h, w]), which
    `BACKGROUND_RMS` and `HOLD_RMS` are compared with. Raises as `median_offset`."""
    drift = median_offset(latents, reference)
    rest = latents.float() - reference.float() - drift
    return drift, rest, rest.pow(2).mean(1, keepdim=True).sqrt()


def anchor_latents(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`latents` [B, C, n, h, w] with the drift (`median_offset`) taken off their background cells,
    the cells whose difference from the reference ([B, C, 1, h, w]) once it is off is under
    `BACKGROUND_RMS` (RMS over channels), and the still cells among them, under `HOLD_RMS`, moved
    `HOLD` of the rest of the way back to the reference; every other cell as given. The same dtype
    and device. Raises as `median_offset`."""
    drift, rest, rms = residual(latents, reference)
    background = rms < BACKGROUND_RMS
    still = background & (rms < HOLD_RMS)
    return (latents.float() - drift * background - HOLD * rest * still).to(latents.dtype)


class DriftAnchor:
    """One stream's anchor state: its reference latent frame and how many chunks until it is taken.

    `apply(latents)` is called with each chunk's clean latents [1, C, n, h, w] in stream order and
    returns what the stream keeps: the chunk itself while no reference is held (the chunk that
    becomes the reference included), else `anchor_latents(latents, reference)`. `release()` (at a
    prompt switch) drops the reference; the `SETTLE_CHUNKS`-th chunk after it is the new one (a
    switch before any chunk changes nothing).

    In a `Session` the chunks are those the model makes: with hidden chunks the first of them gives
    the reference (Deep Sink's sink, the chunk every later one attends to), so the first chunk shown
    is already anchored; after start latents (an image or a video's last frames) the first chunk made
    from them does, not the encoded start, whose first latent frame the autoencoder encodes from a
    single video frame."""

    def __init__(self) -> None:
        self.reference: torch.Tensor | None = None
        self._wait = 1  # chunks until the reference is taken: a stream's first chunk gives it
        self._made = 0  # chunks seen

    def release(self) -> None:
        if self._made == 0:  # a switch before the first chunk: there is no earlier scene to settle from
            return
        self.reference = None
        self._wait = SETTLE_CHUNKS

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        self._made += 1
        if self.reference is not None:
            return anchor_latents(latents, self.reference)
        self._wait -= 1
        if self._wait == 0:
            self.reference = latents[:, :, -1:].clone()
        return latents
