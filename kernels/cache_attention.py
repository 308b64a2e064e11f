"""A chunk's attention over [cached history slots | plain segments], without concatenating them.

The history is read in place from one layer's cache tensors through a slot table; its keys are
stored spatially rotated but not temporally, and each slot's temporal position comes with it.
Rotating a key by R(p) and dotting with q equals dotting the unrotated key with R(-p) q, so the
kernel rotates the *query tile* once per slot instead of every key: the inner loop stays a plain
FlashAttention-2 loop (online softmax, fp32 accumulation) whatever positions a policy assigns.
Plain segments (the chunk's own K/V, compressed tokens) arrive already rotated. The log-sum-exp is
written out so that the attention mass per key can be computed exactly in a second pass.

`cache_attention_reference` is the torch definition: gather, rotate, concatenate, softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from streamer.kernels._triton import INTERPRET, configs, require_triton, tl, triton
from streamer.models.rope import apply_rope, rope_band_dims, temporal_cos_sin

Segment = tuple[torch.Tensor, torch.Tensor]  # pre-rotated keys and values, each [B, S, H, D]
MAX_PLAIN_SEGMENTS = 2  # the chunk itself and the compressed tokens: all a CacheView needs
LOG2E = 1.4426950408889634


@dataclass
class CacheSegment:
    """History frames read in place from one layer's cache (keys spatially rotated, not temporally)."""

    k: torch.Tensor      # [B, num_slots, tokens_per_frame, H, D]
    v: torch.Tensor      # [B, num_slots, tokens_per_frame, H, D]
    slots: torch.Tensor  # [n] int64 on k's device: the slots attended, in order
    cos: torch.Tensor    # [n, t_dim // 2] float32: each slot's temporal rotation
    sin: torch.Tensor

    @classmethod
    def at(cls, k: torch.Tensor, v: torch.Tensor, slots: Sequence[int], positions: Sequence[float],
           theta: float = 10000.0) -> CacheSegment:
        """Angles in float64 from the positions (as models/rope.py does), so any position is exact."""
        cos, sin = temporal_cos_sin(torch.tensor(list(positions), dtype=torch.float64), k.shape[-1], theta, k.device)
        return cls(k, v, torch.tensor(list(slots), dtype=torch.long, device=k.device), cos, sin)

    @property
    def num_tokens(self) -> int:
        return self.slots.numel() * self.k.shape[2]


# ---- torch reference ---------------------------------------------------------------------------

def gather_history(history: CacheSegment) -> Segment:
    """The history's temporally rotated keys and its values, concatenated: [B, n * T, H, D]."""
    n, tokens, d = history.slots.numel(), history.k.shape[2], history.k.shape[-1]
    pad = d // 2 - history.cos.shape[1]  # spatial pairs: no rotation here (already in the cache)
    cos = torch.cat([history.cos, history.cos.new_ones(n, pad)], 1).repeat_interleave(tokens, 0)
    sin = torch.cat([history.sin, history.sin.new_zeros(n, pad)], 1).repeat_interleave(tokens, 0)
    k = history.k.index_select(1, history.slots).flatten(1, 2)
    return apply_rope(k, cos, sin), history.v.index_select(1, history.slots).flatten(1, 2)


def concat_keys(q: torch.Tensor, history: CacheSegment | None, segments: Sequence[Segment]) -> Segment:
    """All keys and values in attention order, in fp32: [history | segments...]."""
    parts = ([gather_history(history)] if history is not None else []) + list(segments)
    b, _, h, d = q.shape
    k = torch.cat([q.new_zeros(b, 0, h, d, dtype=torch.float32)] + [x.float() for x, _ in parts], 1)
    v = torch.cat([q.new_zeros(b, 0, h, d, dtype=torch.float32)] + [x.float() for _, x in parts], 1)
    return k, v


def cache_attention_reference(
    q: torch.Tensor, history: CacheSegment | None = None, segments: Sequence[Segment] = (), scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q [B, Sq, H, D] over all keys -> (out in q's dtype, lse [B, H, Sq] fp32).
    With no keys at all the output is zero and the log-sum-exp -inf."""
    k, v = concat_keys(q, history, segments)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k) * scale
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]) if k.shape[1] else s
    return torch.einsum("bhqk,bkhd->bqhd", p, v).to(q.dtype), lse


# ---- Triton kernel -----------------------------------------------------------------------------

@triton.jit
def _rotate_q(q, cos_row, sin_row, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr, HALF_T: tl.constexpr):
    """R(-p) on the first HALF_T interleaved pairs (the temporal band) of a query tile [BLOCK_M, WIDTH]
    already in registers, fp32 math. Splitting the tile into its even and odd channels keeps no
    pointer tile alive across the slot loop (an earlier version's did, and ptxas spilled)."""
    pair = tl.arange(0, WIDTH // 2)
    band = pair < HALF_T
    c = tl.load(cos_row + pair, mask=band, other=1.0)[None, :]
    s = tl.load(sin_row + pair, mask=band, other=0.0)[None, :]
    even, odd = tl.split(tl.reshape(q.to(tl.float32), [BLOCK_M, WIDTH // 2, 2]))
    return tl.reshape(tl.join(even * c + odd * s, odd * c - even * s), [BLOCK_M, WIDTH])


@triton.jit
def _attend_segment(acc, m_i, l_i, q_lo, q_hi, k_base, s_kt, v_base, s_vt, length, qk_scale, offs_half, offs_d,
                    BLOCK_N: tl.constexpr, HALF_D: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """All keys of one contiguous run, FlashAttention-2 online softmax in the log2 domain (qk_scale
    includes log2 e). q . k is two dots over the low and high halves of the head dim: only the low
    half holds the temporal band, so only it is rotated per slot, and the query tile in flight is
    half as large (this is what lets 128x64 tiles compile without spills).

    K/V tiles arrive either through pointer loads (cp.async on sm_80+) or, with USE_TMA, through
    tensor descriptors made here for this run (TMA bulk copies on sm_90: no address tensors in
    registers, rows past the end filled with zeros by the copy engine). Every tile's scores are
    masked past the end: an unmasked copy of the body for full tiles made ptxas spill."""
    offs_n = tl.arange(0, BLOCK_N)
    if USE_TMA:  # (a run of no keys still gets a valid 1-row descriptor; the loop never reads it)
        rows_total = tl.maximum(length, 1)
        k_desc = tl.make_tensor_descriptor(k_base, shape=[rows_total, 2 * HALF_D], strides=[s_kt, 1],
                                           block_shape=[BLOCK_N, HALF_D])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[rows_total, 2 * HALF_D], strides=[s_vt, 1],
                                           block_shape=[BLOCK_N, 2 * HALF_D])
    for start in range(0, length, BLOCK_N):
        rows = start + offs_n
        valid = rows < length
        if USE_TMA:
            k_lo = k_desc.load([start, 0])
            k_hi = k_desc.load([start, HALF_D])
            v = v_desc.load([start, 0])
        else:
            k_rows = k_base + rows[:, None] * s_kt
            k_lo = tl.load(k_rows + offs_half[None, :], mask=valid[:, None], other=0.0)
            k_hi = tl.load(k_rows + HALF_D + offs_half[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(v_base + rows[:, None] * s_vt + offs_d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q_lo, tl.trans(k_lo.to(q_lo.dtype)), input_precision=PRECISION)
        s = tl.dot(q_hi, tl.trans(k_hi.to(q_hi.dtype)), s, input_precision=PRECISION) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(q_lo.dtype), v.to(q_lo.dtype), acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


# The CUDA search space: configs that ptxas compiles without a single register spill for sm_90 at
# the wan2.1-1.3b shape (`streamer kernels --arch 90` on any machine; tests/test_kernels_compile.py
# keeps it so), each with pointer loads and with TMA loads. The autotuner times them on the GPU at
# hand; `_prune` drops the TMA ones where TMA cannot run (before sm_90, unaligned tensors).
# Kept small: each config is compiled once per shape on first use (then cached on disk).
POINTER_TILES = [(128, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (64, 64, 8, 3), (64, 64, 4, 2)]
TMA_TILES = [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 8, 2), (64, 64, 8, 3)]
CUDA_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "USE_TMA": tma}, num_warps=w, num_stages=st)
                for tma, tiles in ((False, POINTER_TILES), (True, TMA_TILES)) for m, n, w, st in tiles]
# The interpreter cannot time configs: one per load path, `_prune` keeps one.
INTERPRET_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "USE_TMA": tma}, num_warps=4, num_stages=1)
                     for tma in (False, True)]
FORCE_TMA: bool | None = None  # tests: force one load path (None: both, where TMA can run)
_TMA_STRIDES = ["s_kcb", "s_kcs", "s_kct", "s_kch", "s_vcb", "s_vcs", "s_vct", "s_vch", "s_kab", "s_kas", "s_kah",
                "s_vab", "s_vas", "s_vah", "s_kbb", "s_kbs", "s_kbh", "s_vbb", "s_vbs", "s_vbh"]


def _tma_possible(args: dict) -> bool:
    """TMA needs sm_90+, 16-byte aligned bases and strides: every K/V run starts at base + strides."""
    q = args["Q"]
    if INTERPRET or not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] < 9:
        return False
    size = args["KC"].element_size()  # keys and values share the query's dtype
    bases_aligned = all(args[n].data_ptr() % 16 == 0 for n in ("KC", "VC", "KA", "VA", "KB", "VB"))
    return bases_aligned and all(args[n] * size % 16 == 0 for n in _TMA_STRIDES)


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """Both load paths where TMA can run (the autotuner times them all), pointer loads elsewhere."""
    if FORCE_TMA is not None:
        paths = {FORCE_TMA}
    else:
        paths = {False, True} if _tma_possible({**named_args, **kwargs}) else {False}
    return [c for c in configs if c.kwargs["USE_TMA"] in paths]


_allocator_ready = False


def _ensure_tma_allocator() -> None:
    """Tensor descriptors made inside a kernel live in global scratch memory that Triton asks the
    host for through `triton.set_allocator`; torch's caching allocator provides it."""
    global _allocator_ready
    if not _allocator_ready:
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _allocator_ready = True


@triton.autotune(
    configs=configs(interpret=INTERPRET_CONFIGS, cuda=CUDA_CONFIGS),
    key=["Sq", "tokens", "HEAD_DIM", "UPCAST"],
    prune_configs_by={"early_config_prune": _prune},
    # the choice is kept on disk beside the compiled kernels: a new process does not re-time the
    # configs inside its first chunk (first-frame latency)
    cache_results=True,
)
@triton.jit
def _cache_attention_kernel(
    Q, Out, Lse, KC, VC, Slots, Cos, Sin, KA, VA, KB, VB,
    n_hist, tokens, len_a, len_b, Sq, H, qk_scale,
    s_qb, s_qs, s_qh, s_ob, s_os, s_oh,
    s_kcb, s_kcs, s_kct, s_kch, s_vcb, s_vcs, s_vct, s_vch,
    s_kab, s_kas, s_kah, s_vab, s_vas, s_vah,
    s_kbb, s_kbs, s_kbh, s_vbb, s_vbs, s_vbh,
    HEAD_DIM: tl.constexpr, HALF_T: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_mask = offs_m < Sq
    # bf16 tl.dot is wrong under the interpreter and fp32 inputs stay fp32: compute in fp32 there
    cdtype = tl.float32 if UPCAST else Q.dtype.element_ty
    q_base = Q + b * s_qb + h * s_qh
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # history: per slot, rotate the query's low half by minus the slot's temporal angle, then FA2
    kc_base = KC + b * s_kcb + h * s_kch
    vc_base = VC + b * s_vcb + h * s_vch
    offs_half = tl.arange(0, HEAD_DIM // 2)
    q_rows = q_base + offs_m[:, None] * s_qs
    q_lo_in = tl.load(q_rows + offs_half[None, :], mask=row_mask[:, None], other=0.0)
    q_hi = tl.load(q_rows + HEAD_DIM // 2 + offs_half[None, :], mask=row_mask[:, None], other=0.0).to(cdtype)
    for j in range(0, n_hist):
        slot = tl.load(Slots + j).to(tl.int64)
        q_lo = _rotate_q(q_lo_in, Cos + j * HALF_T, Sin + j * HALF_T, BLOCK_M, HEAD_DIM // 2, HALF_T).to(cdtype)
        acc, m_i, l_i = _attend_segment(acc, m_i, l_i, q_lo, q_hi, kc_base + slot * s_kcs, s_kct,
                                        vc_base + slot * s_vcs, s_vct, tokens, qk_scale, offs_half, offs_d,
                                        BLOCK_N, HEAD_DIM // 2, PRECISION, USE_TMA)

    # plain, already rotated segments
    q_lo = q_lo_in.to(cdtype)
    acc, m_i, l_i = _attend_segment(acc, m_i, l_i, q_lo, q_hi, KA + b * s_kab + h * s_kah, s_kas,
                                    VA + b * s_vab + h * s_vah, s_vas, len_a, qk_scale, offs_half, offs_d,
                                    BLOCK_N, HEAD_DIM // 2, PRECISION, USE_TMA)
    acc, m_i, l_i = _attend_segment(acc, m_i, l_i, q_lo, q_hi, KB + b * s_kbb + h * s_kbh, s_kbs,
                                    VB + b * s_vbb + h * s_vbh, s_vbs, len_b, qk_scale, offs_half, offs_d,
                                    BLOCK_N, HEAD_DIM // 2, PRECISION, USE_TMA)

    # no keys at all: output 0 and lse -inf (as the reference), not 0/0
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("-inf"))
    o_ptrs = Out + b * s_ob + h * s_oh + offs_m[:, None] * s_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_mask[:, None])
    tl.store(Lse + bh.to(tl.int64) * Sq + offs_m, lse, mask=row_mask)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def check_head_dim(d: int) -> None:
    # q . k runs as two tensor-core dots over half the head dim each, and those need 16 channels
    if d < 32 or d > 256 or d & (d - 1):
        raise ValueError(f"head dim {d} not supported by the Triton kernels (a power of two in 32..256)")


def launch_args(q: torch.Tensor, history: CacheSegment | None, segments: Sequence[Segment]) -> dict:
    """Shared host-side preparation of the segment table for the attention and the mass kernels."""
    require_triton()
    b, sq, h, d = q.shape
    check_head_dim(d)
    if len(segments) > MAX_PLAIN_SEGMENTS:
        raise ValueError(f"at most {MAX_PLAIN_SEGMENTS} plain segments besides the history, got {len(segments)}")
    dummy = q  # stands in for absent tensors; never read since their lengths are 0
    if history is not None and history.slots.numel():
        kc, vc = _last_dim_contiguous(history.k), _last_dim_contiguous(history.v)
        slots, cos, sin = history.slots, history.cos.contiguous(), history.sin.contiguous()
        n_hist, tokens = slots.numel(), kc.shape[2]
        half_t = cos.shape[1]
    else:
        kc = vc = dummy.unsqueeze(1)
        slots = q.new_zeros(1, dtype=torch.long)
        cos, sin = q.new_ones(1, dtype=torch.float32), q.new_zeros(1, dtype=torch.float32)
        n_hist, tokens = 0, 0
        half_t = rope_band_dims(d)[0] // 2
    if 2 * half_t > d // 2:  # the kernel rotates only the low half of the head dim
        raise ValueError(f"temporal RoPE band of {2 * half_t} channels does not fit in half of head dim {d}")
    plain = [(_last_dim_contiguous(k), _last_dim_contiguous(v)) for k, v in segments]
    plain += [(dummy[:, :0], dummy[:, :0])] * (MAX_PLAIN_SEGMENTS - len(plain))
    for k, v in plain:
        if k.shape[1] != v.shape[1] or k.shape[0] != b or k.shape[2:] != (h, d):
            raise ValueError(f"segment shapes {tuple(k.shape)} / {tuple(v.shape)} do not match q {tuple(q.shape)}")
    (ka, va), (kb, vb) = plain
    return dict(
        q=_last_dim_contiguous(q), kc=kc, vc=vc, slots=slots, cos=cos, sin=sin, ka=ka, va=va, kb=kb, vb=vb,
        n_hist=n_hist, tokens=tokens, len_a=ka.shape[1], len_b=kb.shape[1], half_t=half_t,
        upcast=INTERPRET or q.dtype == torch.float32,
        # fp32 inputs stay exact on tensor-core GPUs (no silent tf32)
        precision="ieee" if q.dtype == torch.float32 else "tf32",
    )


def cache_attention(
    q: torch.Tensor, history: CacheSegment | None = None, segments: Sequence[Segment] = (), scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel: same contract as `cache_attention_reference`."""
    a = launch_args(q, history, segments)
    q = a["q"]
    b, sq, h, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(b, h, sq, device=q.device, dtype=torch.float32)
    if sq == 0:
        return out, lse
    scale = d ** -0.5 if scale is None else scale
    kc, vc, ka, va, kb, vb = a["kc"], a["vc"], a["ka"], a["va"], a["kb"], a["vb"]
    grid = lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * h)  # noqa: E731
    if q.is_cuda:
        _ensure_tma_allocator()
    _cache_attention_kernel[grid](
        q, out, lse, kc, vc, a["slots"], a["cos"], a["sin"], ka, va, kb, vb,
        a["n_hist"], a["tokens"], a["len_a"], a["len_b"], sq, h, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        kc.stride(0), kc.stride(1), kc.stride(2), kc.stride(3), vc.stride(0), vc.stride(1), vc.stride(2), vc.stride(3),
        ka.stride(0), ka.stride(1), ka.stride(2), va.stride(0), va.stride(1), va.stride(2),
        kb.stride(0), kb.stride(1), kb.stride(2), vb.stride(0), vb.stride(1), vb.stride(2),
        HEAD_DIM=d, HALF_T=a["half_t"], UPCAST=a["upcast"], PRECISION=a["precision"],
    )
    return out, lse
