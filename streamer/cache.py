"""The KV cache: preallocated per-layer frame slots, keys stored before RoPE.

Storage is a fixed number of frame *slots* per layer, allocated once; a slot holds one latent
frame's keys and values ([tokens_per_frame, heads, head_dim]) and remembers which frame it holds.
Keys are stored before RoPE, so a policy can give any cached frame any temporal position at
attention time (re-indexing, sink re-alignment, unbounded streams) without rewriting the cache.

A *policy* (streamer/policies.py) decides, once per chunk, which slots the chunk attends to, the
temporal position of each, and which slots receive the chunk's clean K/V. The result is a
`ChunkPlan`; a `CacheView` executes it inside the model's self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from streamer.attention import attention
from streamer.models.rope import apply_rope, rope_cos_sin


class KVCache:
    def __init__(
        self, num_layers: int, num_slots: int, tokens_per_frame: int, num_heads: int, head_dim: int,
        batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ):
        shape = (num_layers, batch, num_slots, tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self.tokens_per_frame = tokens_per_frame
        # frame index held by each slot, or None when free (host-side: policies reason about it)
        self.slot_frame: list[int | None] = [None] * num_slots

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def frames(self) -> list[tuple[int, int]]:
        """(frame index, slot) of every occupied slot, oldest frame first."""
        return sorted((f, s) for s, f in enumerate(self.slot_frame) if f is not None)

    def free(self, slots: list[int]) -> None:
        for s in slots:
            self.slot_frame[s] = None

    def allocate(self, frames: list[int]) -> list[int]:
        """Reserve one free slot per frame (lowest free slots first)."""
        free = [s for s, f in enumerate(self.slot_frame) if f is None]
        if len(free) < len(frames):
            raise RuntimeError(f"KV cache full: {len(frames)} frames to store, {len(free)} free slots")
        for s, f in zip(free, frames):
            self.slot_frame[s] = f
        return free[: len(frames)]

    def write(self, layer: int, slots: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store pre-RoPE k/v [B, len(slots) * tokens_per_frame, H, D] into the given slots."""
        b, _, h, d = k.shape
        k = k.view(b, len(slots), self.tokens_per_frame, h, d)
        v = v.view(b, len(slots), self.tokens_per_frame, h, d)
        if slots == list(range(slots[0], slots[0] + len(slots))):  # contiguous: one copy, no index tensor
            self.k[layer, :, slots[0] : slots[0] + len(slots)] = k
            self.v[layer, :, slots[0] : slots[0] + len(slots)] = v
        else:
            idx = torch.tensor(slots, device=self.k.device)
            self.k[layer].index_copy_(1, idx, k.to(self.k.dtype))
            self.v[layer].index_copy_(1, idx, v.to(self.v.dtype))

    def reset(self) -> None:
        self.slot_frame = [None] * self.num_slots


@dataclass
class ChunkPlan:
    """What one chunk sees and where it goes: made by a policy once, at the chunk's first step."""

    frames: list[int]                 # the chunk's own frame indices
    positions: list[float]            # temporal RoPE position of each chunk frame
    history_slots: list[int]          # cached slots the chunk attends to
    history_positions: list[float]    # temporal RoPE position of each of those slots
    write_slots: list[int]            # slots that receive the chunk's clean K/V on the commit pass
    # optional per-slot, per-layer token selection (participative compression): layer -> token ids
    history_tokens: dict[int, torch.Tensor] = field(default_factory=dict)


class CacheView:
    """Answers the model's self-attention for one chunk according to a ChunkPlan.

    The cached history is gathered and rotated once per layer per chunk (then reused by every
    denoising step and the commit pass) into a workspace laid out [history | chunk]; each step only
    copies the chunk's own rotated K/V into the tail, so there is no growing concatenation.
    When `commit` is set, the chunk's pre-RoPE K/V are written into the plan's slots.
    """

    def __init__(self, cache: KVCache, plan: ChunkPlan, grid: tuple[int, int], head_dim: int, theta: float):
        self.cache, self.plan = cache, plan
        dev = cache.k.device
        gh, gw = grid
        self.chunk_cos, self.chunk_sin = rope_cos_sin(
            torch.tensor(plan.positions, dtype=torch.float64), gh, gw, head_dim, theta, device=dev)
        self.hist_cos, self.hist_sin = rope_cos_sin(
            torch.tensor(plan.history_positions, dtype=torch.float64), gh, gw, head_dim, theta, device=dev)
        self.commit = False
        self._workspace: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def _history(self, layer: int, chunk_len: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        ws = self._workspace.get(layer)
        if ws is not None:
            return ws
        cache, slots = self.cache, self.plan.history_slots
        b, _, h, d = like.shape
        n_hist = len(slots) * cache.tokens_per_frame
        k_ws = like.new_empty(b, n_hist + chunk_len, h, d)
        v_ws = like.new_empty(b, n_hist + chunk_len, h, d)
        if slots:
            idx = torch.tensor(slots, device=cache.k.device)
            k_hist = cache.k[layer].index_select(1, idx).flatten(1, 2)
            k_ws[:, :n_hist] = apply_rope(k_hist, self.hist_cos, self.hist_sin)
            v_ws[:, :n_hist] = cache.v[layer].index_select(1, idx).flatten(1, 2)
        tokens = self.plan.history_tokens.get(layer)
        if tokens is not None:  # compressed history: keep the selected tokens only
            keep = torch.cat([tokens.to(k_ws.device), torch.arange(n_hist, n_hist + chunk_len, device=k_ws.device)])
            k_ws, v_ws, n_hist = k_ws[:, keep], v_ws[:, keep], len(tokens)
        self._workspace[layer] = (k_ws, v_ws, n_hist)
        return self._workspace[layer]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.commit:
            self.cache.write(layer, self.plan.write_slots, k, v)
        k_ws, v_ws, n_hist = self._history(layer, k.shape[1], k)
        k_ws[:, n_hist:] = apply_rope(k, self.chunk_cos, self.chunk_sin)
        v_ws[:, n_hist:] = v
        return attention(apply_rope(q, self.chunk_cos, self.chunk_sin), k_ws, v_ws)
