"""The KV cache: preallocated per-layer frame slots, keys stored before temporal RoPE.

Storage is a fixed number of frame *slots* per layer, allocated once; a slot holds one latent
frame's keys and values ([tokens_per_frame, heads, head_dim]) and remembers which frame it holds.
Keys are stored with their spatial rotation applied and their temporal rotation not: the three
RoPE bands act on disjoint channels, so the temporal part can be applied at attention time from
whatever position a policy assigns (re-indexing, sink re-alignment, unbounded streams) without
ever rewriting the cache, and keys of the same spatial slot in different frames can be averaged
(EMA-Sink) without mixing phases.

Participative compression keeps a per-layer token buffer beside the slots (each layer keeps its
own top tokens) with each token's source frame.

A *policy* (streamer/policies.py) decides, once per chunk, which slots the chunk attends to, the
temporal position of each, and which slots receive the chunk's clean K/V. The result is a
`ChunkPlan` (defined there, beside the policies); a `CacheView` executes it inside the model's
self-attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from streamer import kernels
from streamer.kernels.cache_attention import CacheSegment, Segment
from streamer.models.rope import apply_rope, rope_cos_sin, temporal_cos_sin

if TYPE_CHECKING:
    from streamer.policies import ChunkPlan


class KVCache:
    def __init__(
        self, num_layers: int, num_slots: int, tokens_per_frame: int, num_heads: int, head_dim: int,
        batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
        store_queries: bool = False, compressed_tokens: int = 0,
    ):
        shape = (num_layers, batch, num_slots, tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # clean-pass queries per slot, for policies that score tokens by recent queries
        self.q = torch.zeros(shape, dtype=dtype, device=device) if store_queries else None
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.tokens_per_frame = tokens_per_frame
        # frame index held by each slot, or None when free (host-side: policies reason about it)
        self.slot_frame: list[int | None] = [None] * num_slots
        # per-layer compressed tokens: K/V [L, B, n, H, D] and each token's source frame [L, n]
        ctok = (num_layers, batch, compressed_tokens, num_heads, head_dim)
        self.ck = torch.zeros(ctok, dtype=dtype, device=device)
        self.cv = torch.zeros(ctok, dtype=dtype, device=device)
        self.c_frame = torch.zeros(num_layers, compressed_tokens, dtype=torch.float64)
        self.c_count = 0  # tokens held in every layer's compressed buffer (the same count in all)

    @property
    def nbytes(self) -> int:
        tensors = [self.k, self.v, self.ck, self.cv] + ([self.q] if self.q is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

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

    def write(self, layer: int, slots: list[int], k: torch.Tensor, v: torch.Tensor,
              q: torch.Tensor | None = None) -> None:
        """Store k/v (and q) [B, len(slots) * tokens_per_frame, H, D] into the given slots."""
        idx = torch.tensor(slots, device=self.k.device)
        for store, x in ((self.k, k), (self.v, v), (self.q, q)):
            if store is not None and x is not None:
                store[layer].index_copy_(1, idx, x.unflatten(1, (len(slots), self.tokens_per_frame)).to(store.dtype))

    def reset(self) -> None:
        self.slot_frame = [None] * self.num_slots
        self.c_count = 0

    def grow(self, extra_slots: int) -> None:
        """Add `extra_slots` free frame slots to every layer (an unbounded policy's cache grows in
        blocks: one copy per block of frames, not per chunk). Occupied slots keep their index."""
        def grown(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            pad = t.new_zeros(t.shape[0], t.shape[1], extra_slots, *t.shape[3:])
            return torch.cat([t, pad], dim=2)

        self.k, self.v, self.q = grown(self.k), grown(self.v), grown(self.q)
        self.slot_frame += [None] * extra_slots
        self.num_slots += extra_slots


class LayerHistory:
    """What one layer of a chunk attends to besides the chunk itself, fixed for the chunk.

    `slots`: the cached frames, read in place from the layer's cache with each frame's temporal
    rotation (`CacheSegment`); `compressed`: the layer's compressed tokens, already rotated to their
    positions, or None. `attend()` has two backends: the cache-attention kernel (reads the slots in
    place, rotates inside the kernel) where `kernels` runs it for q, else a torch workspace laid out
    [history | compressed | chunk] that is gathered and rotated once, then reused by every denoising
    step and the clean pass, which only copy the chunk's own K/V into its tail.
    """

    def __init__(self, slots: CacheSegment, compressed: Segment | None):
        self.slots, self.compressed = slots, compressed
        self._workspace: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def segments(self) -> list[Segment]:
        return [self.compressed] if self.compressed is not None else []

    @property
    def num_tokens(self) -> int:
        """History tokens: cached frames' plus compressed ones."""
        return self.slots.num_tokens + (self.compressed[0].shape[1] if self.compressed is not None else 0)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of the chunk's rotated queries q [B, Sq, H, D] over [history | chunk k/v]
        -> (out [B, Sq, H, D], log-sum-exp [B, H, Sq] on the kernel path, else None)."""
        if kernels.use_attention_kernel(q):
            return kernels.run_cache_attention(q, self.slots, self.segments + [(k, v)])
        n_hist = self.num_tokens
        if self._workspace is None:
            from streamer.kernels.cache_attention import gather_history

            b, chunk_len, h, d = k.shape
            k_ws, v_ws = k.new_empty(b, n_hist + chunk_len, h, d), k.new_empty(b, n_hist + chunk_len, h, d)
            n_slot = self.slots.num_tokens
            if n_slot:
                k_ws[:, :n_slot], v_ws[:, :n_slot] = gather_history(self.slots)
            if self.compressed is not None:
                k_ws[:, n_slot:n_hist], v_ws[:, n_slot:n_hist] = self.compressed
            self._workspace = (k_ws, v_ws)
        k_ws, v_ws = self._workspace
        k_ws[:, n_hist:] = k
        v_ws[:, n_hist:] = v
        return kernels.sdpa(q, k_ws, v_ws), None

    def frame_mass(self, q: torch.Tensor, lse: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Share of the chunk's attention (mean over batch, heads and queries) received by each history
        frame, by the compressed tokens together, and by the chunk itself: [len(slots) + 2], on the host.
        Exact: a second pass from the saved log-sum-exp on the kernel path."""
        per_key = kernels.run_attention_mass(q, lse, self.slots, self.segments + [(k, v)]).mean(0)
        tpf, n_slot, n_hist = self.slots.k.shape[2], self.slots.num_tokens, self.num_tokens
        frames = per_key[:n_slot].view(-1, tpf).sum(-1)
        return torch.cat([frames, per_key[n_slot:n_hist].sum()[None], per_key[n_hist:].sum()[None]]).cpu()


class CacheView:
    """Answers the model's self-attention for one chunk according to a ChunkPlan.

    Per layer, the first call fixes the chunk's `LayerHistory` (running participative compression
    first when the plan asks for it); every denoising step and the clean pass then attend to it.
    When `commit` is set, the chunk's spatially rotated K/V are written into the plan's slots.
    With `record_mass`, each layer's attention mass per history frame is kept in `mass`.

    RoPE is split between the model and the view. The view declares the spatial rotation as
    `qk_rope` (see `models.wan.SelfAttention`); the model fuses it into the q/k norm, so q and k
    arrive in the form the cache stores (spatially rotated, temporally not) and the view applies
    only the chunk's temporal rotation (`chunk_cos` / `chunk_sin`). The bands rotate disjoint
    channels and a band's pairs pass a rotation of the other band unchanged (cos 1, sin 0, exactly),
    so the two halves give the full rotation bit for bit.
    """

    def __init__(self, cache: KVCache, plan: ChunkPlan, grid: tuple[int, int], head_dim: int, theta: float):
        self.cache, self.plan = cache, plan
        self.grid, self.head_dim, self.theta = grid, head_dim, theta
        self.device = dev = cache.k.device
        pos = torch.tensor(plan.positions, dtype=torch.float64)
        self.qk_rope = rope_cos_sin(torch.zeros_like(pos), *grid, head_dim, theta, device=dev, temporal=False)
        self.chunk_cos, self.chunk_sin = rope_cos_sin(pos, *grid, head_dim, theta, device=dev, spatial=False)
        self._slots = torch.tensor(plan.history_slots, dtype=torch.long, device=dev)
        self._slot_cos, self._slot_sin = temporal_cos_sin(
            torch.tensor(plan.history_positions, dtype=torch.float64), head_dim, theta, dev)
        self.commit = False
        self.record_mass = False
        self.mass: dict[int, torch.Tensor] = {}
        self._layers: dict[int, LayerHistory] = {}
        self._n_compressed_before = cache.c_count  # candidates of every layer's selection

    def history(self, layer: int, q_spatial: torch.Tensor) -> LayerHistory:
        """The layer's history for this chunk, made at its first call (q: the chunk's spatially
        rotated queries, which participative compression scores with)."""
        hist = self._layers.get(layer)
        if hist is None:
            cache = self.cache
            if self.plan.compression is not None:
                self._compress(layer, q_spatial)
            n = cache.c_count
            compressed = None
            if n:
                cos, sin = temporal_cos_sin(self._compressed_positions(layer, n), self.head_dim, self.theta,
                                            self.device, full=True)
                compressed = (apply_rope(cache.ck[layer, :, :n], cos, sin), cache.cv[layer, :, :n])
            slots = CacheSegment(cache.k[layer], cache.v[layer], self._slots, self._slot_cos, self._slot_sin)
            hist = self._layers[layer] = LayerHistory(slots, compressed)
        return hist

    def _compress(self, layer: int, q_chunk: torch.Tensor) -> None:
        """Select this layer's kept tokens among its compressed buffer and the candidate frames.

        Candidates are laid out in temporal order (older compressed tokens, then candidate frames
        oldest first), so sorting the kept indices keeps temporal order. Scored at the true frame
        distance: recent queries and candidate keys rotated by their own frame index."""
        cache, comp = self.cache, self.plan.compression
        tpf, dev = cache.tokens_per_frame, self.device
        idx = torch.tensor(comp.candidate_slots, device=dev, dtype=torch.long)
        n_old = self._n_compressed_before
        cand_k = torch.cat([cache.ck[layer, :, :n_old], cache.k[layer].index_select(1, idx).flatten(1, 2)], dim=1)
        cand_v = torch.cat([cache.cv[layer, :, :n_old], cache.v[layer].index_select(1, idx).flatten(1, 2)], dim=1)
        slot_frames = torch.tensor([float(cache.slot_frame[s]) for s in comp.candidate_slots], dtype=torch.float64)
        cand_frame = torch.cat([cache.c_frame[layer, :n_old], slot_frames.repeat_interleave(tpf)])
        q_idx = torch.tensor(comp.query_slots, device=dev, dtype=torch.long)
        q_frames = torch.tensor([float(cache.slot_frame[s]) for s in comp.query_slots], dtype=torch.float64)
        qc, qs = rope_cos_sin(q_frames, *self.grid, self.head_dim, self.theta, device=dev, spatial=False)
        cc, cs = rope_cos_sin(torch.tensor([float(f) for f in self.plan.frames], dtype=torch.float64), *self.grid,
                              self.head_dim, self.theta, device=dev, spatial=False)
        queries = torch.cat([apply_rope(cache.q[layer].index_select(1, q_idx).flatten(1, 2), qc, qs),
                             apply_rope(q_chunk, cc, cs)], dim=1)
        score = kernels.run_participation_scores(queries, cand_k, cand_frame, self.theta)
        keep = torch.topk(score, comp.keep).indices.sort().values
        cache.ck[layer, :, : comp.keep] = cand_k[:, keep]
        cache.cv[layer, :, : comp.keep] = cand_v[:, keep]
        cache.c_frame[layer, : comp.keep] = cand_frame[keep.cpu()]
        cache.c_count = comp.keep  # every layer keeps the same number of tokens

    def _compressed_positions(self, layer: int, n: int) -> torch.Tensor:
        """Compressed tokens fill the `compressed_span` positions right before the recent frames,
        spread by source frame in temporal order (bounded however old the tokens are)."""
        ranks = torch.unique(self.cache.c_frame[layer, :n], return_inverse=True)[1].double()
        n_distinct = float(ranks.max()) + 1
        span = self.plan.compressed_span
        return self.plan.compressed_start - span + torch.floor(ranks * span / n_distinct)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k [B, S, H, D] normed and spatially rotated (`qk_rope`), v: the chunk's own."""
        if self.commit:
            self.cache.write(layer, self.plan.write_slots, k, v, q)  # q only kept when the cache stores queries
        hist = self.history(layer, q)
        q_rot = kernels.run_rope(q, self.chunk_cos, self.chunk_sin)
        k_rot = kernels.run_rope(k, self.chunk_cos, self.chunk_sin)
        out, lse = hist.attend(q_rot, k_rot, v)
        if self.record_mass and not self.commit:
            self.mass[layer] = hist.frame_mass(q_rot, lse, k_rot, v)
        return out
