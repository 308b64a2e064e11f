"""Per-key attention statistics for cache policies and the UI's cache view.

- `attention_mass`: the exact mean (over heads and queries) softmax probability each key receives,
  as a second pass from the log-sum-exp saved by the attention kernel. Exact because each
  probability is exp(s - lse) with the final lse; one pass with atomics over not yet normalised
  probabilities would be wrong. Keys are laid out as in `cache_attention`: [history | segments].
- `participation_scores`: Deep Forcing's raw score of a key, sum over queries and heads of q . k,
  with each key temporally rotated by its own (float) frame position inside the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from streamer.kernels._triton import INTERPRET, require_triton, tl, triton
from streamer.kernels.cache_attention import (
    LOG2E, CacheSegment, Segment, _rotate_q, check_head_dim, concat_keys, launch_args,
)
from streamer.models.rope import apply_rope, temporal_cos_sin

# ---- torch references --------------------------------------------------------------------------


def attention_mass_reference(
    q: torch.Tensor, history: CacheSegment | None = None, segments: Sequence[Segment] = (), scale: float | None = None,
) -> torch.Tensor:
    """Mean over heads and queries of the softmax probability of each key: [B, n_keys], fp32."""
    k, _ = concat_keys(q, history, segments)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q.float(), k) * scale, dim=-1)
    return p.mean(dim=(1, 2))


def participation_scores_reference(
    queries: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor | None = None, theta: float = 10000.0,
) -> torch.Tensor:
    """sum over batch, queries and heads of q . R(p_j) k_j -> [n_keys] fp32 (no rotation without positions)."""
    if positions is not None:
        keys = apply_rope(keys.float(), *temporal_cos_sin(positions, keys.shape[-1], theta, keys.device, full=True))
    # (sum_q q) . k equals sum_q (q . k): the query sum first makes it O(Q + K), not O(Q * K)
    return torch.einsum("bhd,bkhd->k", queries.float().sum(dim=1), keys.float())


# ---- attention mass kernel ---------------------------------------------------------------------

@triton.jit
def _mass_tile(q_base, s_qs, lse_base, out_ptrs, k_ptrs, n_valid, cos_row, sin_row, Sq, qk_scale,
               ROTATE: tl.constexpr, HEAD_DIM: tl.constexpr, HALF_T: tl.constexpr, UPCAST: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Sum over all queries of exp(q . k * scale - lse) for one tile of keys of one (batch, head)."""
    cdtype = tl.float32 if UPCAST else q_base.dtype.element_ty
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_n < n_valid
    k = tl.load(k_ptrs, mask=valid[:, None], other=0.0).to(cdtype)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m0 in range(0, Sq, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < Sq
        q = tl.load(q_base + rows[:, None] * s_qs + offs_d[None, :], mask=row_mask[:, None], other=0.0)
        if ROTATE:
            q = _rotate_q(q.to(tl.float32), cos_row, sin_row, BLOCK_M, HEAD_DIM, HALF_T)
        s = tl.dot(q.to(cdtype), tl.trans(k), input_precision=PRECISION) * qk_scale
        lse = tl.load(lse_base + rows, mask=row_mask, other=float("inf")) * 1.4426950408889634
        total += tl.sum(tl.exp2(s - lse[:, None]), 0)
    tl.store(out_ptrs, total, mask=valid)


@triton.jit
def _attention_mass_kernel(
    Q, Lse, Out, KC, Slots, Cos, Sin, KA, KB,
    n_hist, tokens, len_a, Sq, H, n_keys, qk_scale,
    s_qb, s_qs, s_qh, s_kcb, s_kcs, s_kct, s_kch, s_kab, s_kas, s_kah, s_kbb, s_kbs, s_kbh,
    HEAD_DIM: tl.constexpr, HALF_T: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (key tiles over [history slots | A | B], batch * heads); writes Out[b, h, key]."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b * s_qb + h * s_qh
    lse_base = Lse + bh.to(tl.int64) * Sq
    out_base = Out + bh.to(tl.int64) * n_keys
    per_slot = tl.cdiv(tokens, BLOCK_N)
    hist_tiles = n_hist * per_slot
    a_tiles = tl.cdiv(len_a, BLOCK_N)
    if tile < hist_tiles:
        j = tile // per_slot
        start = (tile % per_slot) * BLOCK_N
        slot = tl.load(Slots + j).to(tl.int64)
        k_ptrs = KC + b * s_kcb + slot * s_kcs + h * s_kch + (start + offs_n)[:, None] * s_kct + offs_d[None, :]
        _mass_tile(q_base, s_qs, lse_base, out_base + j * tokens + start + offs_n, k_ptrs, tokens - start,
                   Cos + j * HALF_T, Sin + j * HALF_T, Sq, qk_scale,
                   True, HEAD_DIM, HALF_T, UPCAST, PRECISION, BLOCK_M, BLOCK_N)
    elif tile < hist_tiles + a_tiles:
        start = (tile - hist_tiles) * BLOCK_N
        k_ptrs = KA + b * s_kab + h * s_kah + (start + offs_n)[:, None] * s_kas + offs_d[None, :]
        _mass_tile(q_base, s_qs, lse_base, out_base + n_hist * tokens + start + offs_n, k_ptrs, len_a - start,
                   Cos, Sin, Sq, qk_scale, False, HEAD_DIM, HALF_T, UPCAST, PRECISION, BLOCK_M, BLOCK_N)
    else:
        start = (tile - hist_tiles - a_tiles) * BLOCK_N
        k_ptrs = KB + b * s_kbb + h * s_kbh + (start + offs_n)[:, None] * s_kbs + offs_d[None, :]
        len_b = n_keys - n_hist * tokens - len_a
        _mass_tile(q_base, s_qs, lse_base, out_base + n_hist * tokens + len_a + start + offs_n, k_ptrs,
                   len_b - start, Cos, Sin, Sq, qk_scale, False, HEAD_DIM, HALF_T, UPCAST, PRECISION,
                   BLOCK_M, BLOCK_N)


def attention_mass(
    q: torch.Tensor, lse: torch.Tensor, history: CacheSegment | None = None, segments: Sequence[Segment] = (),
    scale: float | None = None,
) -> torch.Tensor:
    """The Triton second pass: same contract as `attention_mass_reference`, given the attention's lse."""
    a = launch_args(q, history, segments)
    q = a["q"]
    b, sq, h, d = q.shape
    n_keys = a["n_hist"] * a["tokens"] + a["len_a"] + a["len_b"]
    out = torch.zeros(b, h, n_keys, device=q.device, dtype=torch.float32)
    if n_keys == 0 or sq == 0:
        return out.sum(1)
    # a rare, UI-driven pass: fixed tiles (small ones keep the interpreter quick)
    block_m, block_n = (16, 16) if INTERPRET else (64, 64)
    cdiv = triton.cdiv
    grid = (a["n_hist"] * cdiv(a["tokens"], block_n) + cdiv(a["len_a"], block_n) + cdiv(a["len_b"], block_n), b * h)
    kc, ka, kb = a["kc"], a["ka"], a["kb"]
    scale = d ** -0.5 if scale is None else scale
    _attention_mass_kernel[grid](
        q, lse.contiguous(), out, kc, a["slots"], a["cos"], a["sin"], ka, kb,
        a["n_hist"], a["tokens"], a["len_a"], sq, h, n_keys, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), kc.stride(0), kc.stride(1), kc.stride(2), kc.stride(3),
        ka.stride(0), ka.stride(1), ka.stride(2), kb.stride(0), kb.stride(1), kb.stride(2),
        HEAD_DIM=d, HALF_T=a["half_t"], UPCAST=a["upcast"], PRECISION=a["precision"],
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4,
    )
    return out.sum(1) / (h * sq)


# ---- participation score kernel ----------------------------------------------------------------

@triton.jit
def _participation_kernel(
    Qsum, K, PosIdx, Cos, Sin, Out, B, H, n_keys, s_kb, s_ks, s_kh,
    ROTATE: tl.constexpr, HEAD_DIM: tl.constexpr, HALF_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """score[j] = sum over (b, h) of qsum[b, h] . R(p_j) k[b, j, h]; the query sum is taken first
    ((sum_q q) . k == sum_q q . k), so the kernel is one read of the keys."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_n < n_keys
    if ROTATE:  # R(p) k on the temporal band: even d gets k[d] c - k[d+1] s, odd d gets k[d] c + k[d-1] s
        pair = offs_d // 2
        band = (pair < HALF_T)[None, :] & valid[:, None]
        idx = tl.load(PosIdx + offs_n, mask=valid, other=0)
        c = tl.load(Cos + idx[:, None] * HALF_T + pair[None, :], mask=band, other=1.0)
        s = tl.load(Sin + idx[:, None] * HALF_T + pair[None, :], mask=band, other=0.0)
        s = tl.where((offs_d % 2 == 0)[None, :], -s, s)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for bh in range(0, B * H):
        b = bh // H
        h = bh % H
        base = K + b.to(tl.int64) * s_kb + h * s_kh + offs_n[:, None] * s_ks
        k = tl.load(base + offs_d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        if ROTATE:
            k_swap = tl.load(base + (offs_d ^ 1)[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
            k = k * c + k_swap * s
        qs = tl.load(Qsum + bh * HEAD_DIM + offs_d)
        total += tl.sum(k * qs[None, :], 1)
    tl.store(Out + offs_n, total, mask=valid)


def participation_scores(
    queries: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor | None = None, theta: float = 10000.0,
) -> torch.Tensor:
    """The Triton kernel: same contract as `participation_scores_reference`."""
    require_triton()
    b, n, h, d = keys.shape
    check_head_dim(d)
    out = torch.empty(n, device=keys.device, dtype=torch.float32)
    if n == 0:
        return out
    keys = keys if keys.stride(-1) == 1 else keys.contiguous()
    qsum = queries.float().sum(dim=1).contiguous()  # [B, H, D]: a plain reduction, torch does it at bandwidth
    rotate = positions is not None
    if rotate:  # few distinct positions (one per source frame): a small table plus an index per key
        uniq, inverse = torch.unique(positions.to(torch.float64), return_inverse=True)
        cos, sin = (x.to(keys.device).contiguous() for x in temporal_cos_sin(uniq, d, theta))
        pos_idx = inverse.to(device=keys.device, dtype=torch.int32)
    else:
        cos = sin = qsum
        pos_idx = out
    block_n = 16 if INTERPRET else 64
    _participation_kernel[(triton.cdiv(n, block_n),)](
        qsum, keys, pos_idx, cos, sin, out, b, h, n, keys.stride(0), keys.stride(1), keys.stride(2),
        ROTATE=rotate, HEAD_DIM=d, HALF_T=cos.shape[-1] if rotate else 1, BLOCK_N=block_n, num_warps=4,
    )
    return out

