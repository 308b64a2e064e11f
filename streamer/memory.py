"""Memory admission: what a stream's buffers will take, checked against free memory before allocating.

A size, window or budget typed by mistake (`--size 100000x100000`, `window=100000000`) must be
refused in a second with one line that says what to lower, not after the allocator has tried for
a minute and failed with a traceback. The estimate is the formula of DESIGN section 12:

    KV cache   = layers x slots x tokens_per_frame x heads x head_dim x 2 (K, V) x dtype bytes
    queries    = the same without the 2, when the policy scores tokens by recent queries
    compressed = layers x compressed_tokens x heads x head_dim x 2 x dtype bytes
    activations (rough): one chunk's hidden states, q/k/v, FFN and the gathered history of one layer
    decoder (rough): the streaming decoder's per-chunk activations and causal cache at video size

No psutil: free memory is MemAvailable from /proc/meminfo (capped by a cgroup limit) on CPU and
`torch.cuda.mem_get_info` on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from streamer.errors import ResourceError

GiB = 1 << 30
# Rough decoder cost per output pixel per frame of a chunk: Wan's VAE decoder runs 96-384 channels
# at up to full resolution with a 2-frame causal cache per conv; a tiny decoder needs far less.
DECODER_BYTES_PER_PIXEL = 64 * 4


@dataclass
class StreamBytes:
    """Bytes of one stream's buffers, by part."""
    kv_cache: int
    queries: int
    compressed: int
    activations: int
    decoder: int

    @property
    def total(self) -> int:
        return self.kv_cache + self.queries + self.compressed + self.activations + self.decoder

    def largest(self) -> str:
        parts = {"KV cache": self.kv_cache + self.queries + self.compressed, "activations": self.activations,
                 "decoder": self.decoder}
        return max(parts, key=parts.get)


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate_stream_bytes(model_config, tokens_per_frame: int, num_slots: int, dtype: torch.dtype,
                          store_queries: bool = False, compressed_tokens: int = 0, chunk_frames: int = 3,
                          video_pixels: int = 0, temporal: int = 4) -> StreamBytes:
    """Bytes a stream allocates: model_config a WanConfig (num_layers, num_heads, head_dim, dim, ffn_dim);
    tokens_per_frame latent tokens per frame after patching; num_slots cached frames per layer; video_pixels
    width x height of the decoded video (0: leave the decoder out); temporal video frames per latent frame.
    Plain Python integers: exact for any size, nothing is allocated."""
    b = _dtype_bytes(dtype)
    layers, heads, head_dim = model_config.num_layers, model_config.num_heads, model_config.head_dim
    per_frame = tokens_per_frame * heads * head_dim * b           # one K (or V, or Q) of one frame, one layer
    kv = layers * num_slots * per_frame * 2
    queries = layers * num_slots * per_frame if store_queries else 0
    compressed = layers * compressed_tokens * heads * head_dim * 2 * b
    chunk_tokens = chunk_frames * tokens_per_frame
    # one layer at a time: hidden states and their norms/residuals (~8 x dim), q/k/v/out (4 x dim),
    # the FFN's inner activations (2 x ffn_dim), and the history gathered for attention (K and V of all slots)
    activations = chunk_tokens * (12 * model_config.dim + 2 * model_config.ffn_dim) * max(b, 4)
    activations += num_slots * per_frame * 2
    decoder = video_pixels * (temporal * chunk_frames) * DECODER_BYTES_PER_PIXEL
    return StreamBytes(kv, queries, compressed, activations, decoder)


def free_bytes(device: torch.device | str) -> int | None:
    """Memory that can still be allocated on `device` (None: unknown, e.g. no /proc)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's own limit (cgroup v2), which /proc/meminfo does not show
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def check_stream_fits(need: StreamBytes, device: torch.device | str, what: str = "") -> None:
    """Raise ResourceError when `need` exceeds the free memory of `device`, naming what to lower.
    `what`: the stream's knobs for the message (e.g. "832x480, window 21 frames")."""
    free = free_bytes(device)
    if free is None or need.total <= free:
        return
    hint = {"KV cache": "the video size (--size) or the policy's window / budget / keep_blocks (--policy-arg)",
            "activations": "the video size (--size) or the chunk (--chunk)",
            "decoder": "the video size (--size) or the chunk (--chunk)"}[need.largest()]
    knobs = f" ({what})" if what else ""
    raise ResourceError(
        f"this stream{knobs} needs about {need.total / GiB:.1f} GiB (KV cache {(need.kv_cache + need.queries + need.compressed) / GiB:.1f} GiB, "
        f"activations {need.activations / GiB:.1f} GiB, decoder {need.decoder / GiB:.1f} GiB) but {torch.device(device).type} "
        f"has {free / GiB:.1f} GiB free; lower {hint}")


def check_weights_fit(params: int, dtype: torch.dtype, device: torch.device | str, what: str) -> None:
    """Raise ResourceError when `params` weights cannot be built for `device` in `dtype`: a module is
    built in fp32 on the host, then cast and moved one parameter at a time, so the host needs about
    4 bytes a weight and a GPU `dtype`'s bytes a weight. `what` names the model in the message ("a
    random wan2.1-14b DiT"). Unknown free memory passes."""
    device = torch.device(device)
    needs = [("cpu", params * 4)]
    if device.type != "cpu":
        needs.append((device, params * _dtype_bytes(dtype)))
    for where, need in needs:
        free = free_bytes(where)
        if free is not None and need > free:
            raise ResourceError(f"{what} ({params / 1e9:.2f}B weights) needs about {need / GiB:.1f} GiB to build on "
                                f"{torch.device(where).type} but it has {free / GiB:.1f} GiB free; pick a smaller preset")


def admit_stream(model_config, tokens_per_frame: int, num_slots: int, dtype: torch.dtype, device,
                 store_queries: bool = False, compressed_tokens: int = 0, chunk_frames: int = 3,
                 video_pixels: int = 0, what: str = "") -> StreamBytes:
    """estimate_stream_bytes + check_stream_fits in one call (what Session.__init__ runs first)."""
    need = estimate_stream_bytes(model_config, tokens_per_frame, num_slots, dtype, store_queries, compressed_tokens,
                                 chunk_frames, video_pixels)
    if os.environ.get("STREAMER_NO_ADMISSION") != "1":  # escape hatch for measuring the allocator itself
        check_stream_fits(need, device, what)
    return need
