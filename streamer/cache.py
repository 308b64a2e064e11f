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
`ChunkPlan`; a `CacheView` executes it inside the model's self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from streamer import kernels  # registers the "triton" attention backend when Triton is installed
from streamer.attention import attention, get_backend
from streamer.models.rope import apply_rope, rope_cos_sin, temporal_angles


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


@dataclass
class Compression:
    """Participative compression for one chunk (Deep Forcing): at the chunk's first forward, each
    layer scores the candidate tokens (its compressed buffer + `candidate_slots`) by the summed dot
    product with recent queries (`query_slots` frames + the chunk itself) and keeps the top `keep`
    in temporal order; that selection is fixed for the chunk's remaining steps."""

    candidate_slots: list[int]
    query_slots: list[int]
    keep: int                             # tokens kept per layer


@dataclass
class ChunkPlan:
    """What one chunk sees and where it goes: made by a policy once, at the chunk's first step."""

    frames: list[int]                     # the chunk's own frame indices
    positions: list[float]                # temporal RoPE position of each chunk frame
    history_slots: list[int]              # cached slots the chunk attends to
    history_positions: list[float]        # temporal RoPE position of each of those slots
    write_slots: list[int]                # slots that receive the chunk's clean K/V on the commit pass
    history_kinds: list[str] = field(default_factory=list)  # "sink" / "window" per history slot
    compressed_start: float = 0.0         # compressed tokens take the positions just before this one,
    compressed_span: float = 0.0          # this many of them (one frame's worth of tokens per position)
    compression: Compression | None = None

    @property
    def labels(self) -> list[str]:
        """One label per entry of the attention-mass vector: history frames, compressed, chunk."""
        kinds = self.history_kinds or ["window"] * len(self.history_slots)
        return [f"{k}:{p:g}" for k, p in zip(kinds, self.history_positions)] + ["compressed", "chunk"]


class CacheView:
    """Answers the model's self-attention for one chunk according to a ChunkPlan.

    The cached history is gathered and temporally rotated once per layer per chunk (then reused
    by every denoising step and the commit pass) into a workspace laid out [history | chunk]; each
    step only copies the chunk's own K/V into the tail, so there is no growing concatenation.
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
        dev = cache.k.device
        pos = torch.tensor(plan.positions, dtype=torch.float64)
        self.qk_rope = self._cos_sin(torch.zeros_like(pos), temporal=False)  # applied by the model
        self.chunk_cos, self.chunk_sin = self._cos_sin(pos, spatial=False)  # applied here, to q and the chunk's k
        self.hist_cos, self.hist_sin = self._cos_sin(torch.tensor(plan.history_positions, dtype=torch.float64),
                                                     spatial=False)
        self.device = dev
        self.commit = False
        self.record_mass = False
        self.mass: dict[int, torch.Tensor] = {}
        self._workspace: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._n_compressed_before = cache.c_count  # candidates of every layer's selection

    def _cos_sin(self, positions: torch.Tensor, temporal: bool = True, spatial: bool = True):
        return rope_cos_sin(positions, *self.grid, self.head_dim, self.theta, device=self.cache.k.device,
                            temporal=temporal, spatial=spatial)

    def _compress(self, layer: int, q_chunk: torch.Tensor) -> None:
        """Select this layer's kept tokens among its compressed buffer and the candidate frames.

        Candidates are laid out in temporal order (older compressed tokens, then candidate frames
        oldest first), so sorting the kept indices keeps temporal order."""
        cache, comp = self.cache, self.plan.compression
        tpf = cache.tokens_per_frame
        idx = torch.tensor(comp.candidate_slots, device=cache.k.device, dtype=torch.long)
        n_old = self._n_compressed_before
        cand_k = torch.cat([cache.ck[layer, :, :n_old], cache.k[layer].index_select(1, idx).flatten(1, 2)], dim=1)
        cand_v = torch.cat([cache.cv[layer, :, :n_old], cache.v[layer].index_select(1, idx).flatten(1, 2)], dim=1)
        slot_frames = torch.tensor([float(cache.slot_frame[s]) for s in comp.candidate_slots], dtype=torch.float64)
        cand_frame = torch.cat([cache.c_frame[layer, :n_old], slot_frames.repeat_interleave(tpf)])
        # Score at the true frame distance: recent queries and keys rotated by their own frame index.
        q_idx = torch.tensor(comp.query_slots, device=cache.k.device, dtype=torch.long)
        q_frames = torch.tensor([float(cache.slot_frame[s]) for s in comp.query_slots], dtype=torch.float64)
        qc, qs = self._cos_sin(q_frames, spatial=False)
        cc, cs = self._cos_sin(torch.tensor([float(f) for f in self.plan.frames], dtype=torch.float64), spatial=False)
        queries = torch.cat([apply_rope(cache.q[layer].index_select(1, q_idx).flatten(1, 2), qc, qs),
                             apply_rope(q_chunk, cc, cs)], dim=1)
        keys = apply_rope(cand_k, *self._token_cos_sin(cand_frame))
        score = participation_scores(queries, keys)
        keep = torch.topk(score, comp.keep).indices.sort().values
        cache.ck[layer, :, : comp.keep] = cand_k[:, keep]
        cache.cv[layer, :, : comp.keep] = cand_v[:, keep]
        cache.c_frame[layer, : comp.keep] = cand_frame[keep.cpu()]
        cache.c_count = comp.keep  # every layer keeps the same number of tokens

    def _token_cos_sin(self, token_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal-only cos/sin for individual tokens given their (float) positions."""
        a = temporal_angles(token_positions, self.head_dim, self.theta)
        a = torch.cat([a, a.new_zeros(a.shape[0], self.head_dim // 2 - a.shape[1])], dim=1)
        return a.cos().float().to(self.cache.k.device), a.sin().float().to(self.cache.k.device)

    def _compressed_positions(self, layer: int, n: int) -> torch.Tensor:
        """Compressed tokens fill the `compressed_span` positions right before the recent frames,
        spread by source frame in temporal order (bounded however old the tokens are)."""
        ranks = torch.unique(self.cache.c_frame[layer, :n], return_inverse=True)[1].double()
        n_distinct = float(ranks.max()) + 1
        span = self.plan.compressed_span
        return self.plan.compressed_start - span + torch.floor(ranks * span / n_distinct)

    def _history(self, layer: int, k_chunk: torch.Tensor, q_chunk_spatial: torch.Tensor | None):
        ws = self._workspace.get(layer)
        if ws is not None:
            return ws
        cache, slots = self.cache, self.plan.history_slots
        if self.plan.compression is not None:
            self._compress(layer, q_chunk_spatial)
        b, chunk_len, h, d = k_chunk.shape
        n_slot_tok = len(slots) * cache.tokens_per_frame
        n_comp = cache.c_count
        n_hist = n_slot_tok + n_comp
        k_ws = k_chunk.new_empty(b, n_hist + chunk_len, h, d)
        v_ws = k_chunk.new_empty(b, n_hist + chunk_len, h, d)
        if slots:
            idx = torch.tensor(slots, device=cache.k.device)
            k_ws[:, :n_slot_tok] = apply_rope(cache.k[layer].index_select(1, idx).flatten(1, 2),
                                              self.hist_cos, self.hist_sin)
            v_ws[:, :n_slot_tok] = cache.v[layer].index_select(1, idx).flatten(1, 2)
        if n_comp:
            c, s = self._token_cos_sin(self._compressed_positions(layer, n_comp))
            k_ws[:, n_slot_tok:n_hist] = apply_rope(cache.ck[layer, :, :n_comp], c, s)
            v_ws[:, n_slot_tok:n_hist] = cache.cv[layer, :, :n_comp]
        self._workspace[layer] = (k_ws, v_ws, n_hist)
        return self._workspace[layer]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k [B, S, H, D] normed and spatially rotated (`qk_rope`), v: the chunk's own."""
        if self.commit:
            self.cache.write(layer, self.plan.write_slots, k, v, q)  # q only kept when the cache stores queries
        # ---- Triton fast path: history slots read in place, rotated in-kernel, no workspace ----
        if get_backend() == "triton" and kernels.use_attention_kernel(q):
            from streamer.kernels.cache_attention import view_attention

            return view_attention(self, layer, q, k, v)
        # ---- end of the fast path ----
        k_ws, v_ws, n_hist = self._history(layer, k, q)
        k_ws[:, n_hist:] = kernels.run_rope(k, self.chunk_cos, self.chunk_sin)
        v_ws[:, n_hist:] = v
        q_rot = kernels.run_rope(q, self.chunk_cos, self.chunk_sin)
        if self.record_mass and not self.commit:
            self.mass[layer] = self._mass(q_rot, k_ws, n_hist)
        return attention(q_rot, k_ws, v_ws)

    def _mass(self, q: torch.Tensor, k: torch.Tensor, n_hist: int) -> torch.Tensor:
        """Share of the chunk's attention received by each history frame, the compressed tokens and
        the chunk itself (mean over queries and heads); only computed when asked for."""
        scale = q.shape[-1] ** -0.5
        p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale, dim=-1)
        per_key = p.mean(dim=(0, 1, 2))
        tpf = self.cache.tokens_per_frame
        n_slot_tok = len(self.plan.history_slots) * tpf
        frames = per_key[:n_slot_tok].view(-1, tpf).sum(-1) if n_slot_tok else per_key.new_zeros(0)
        return torch.cat([frames, per_key[n_slot_tok:n_hist].sum()[None], per_key[n_hist:].sum()[None]]).cpu()


def participation_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Deep Forcing's participation of each key: sum over queries and heads of q . k -> [n_keys].
    (sum_q q) . k equals sum_q (q . k), so the query sum is taken first: O(Q + K), not O(Q * K)."""
    return torch.einsum("bhd,bkhd->k", queries.float().sum(dim=1), keys.float())
