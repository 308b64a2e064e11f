"""`streamer bench --kernels`: the Triton kernels against torch at the wan2.1-1.3b shape (issue 7).

Per history length N (latent frames of 1560 tokens already cached; the chunk adds 3 more):
- cache attention: our kernel reading the history in place (slot table + temporal positions, RoPE
  inside the kernel) with the chunk as a plain segment, against torch SDPA on keys already rotated
  and concatenated in SDPA's [B, H, S, D] layout, once per SDPA backend torch offers (the best one is
  the bar: issue 7 asks for >= 0.9 of it), and against the torch path a CacheView takes without the
  kernel: gather + rotate + concatenate + SDPA at a chunk's first step, copy + SDPA at later steps;
- the attention mass second pass (from the saved log-sum-exp) against the torch softmax;
- Deep Forcing's participation scores, and the fused qk RMSNorm + RoPE, LayerNorm + adaLN modulate
  and gated residual against their torch references (effective GB/s: the bytes a single pass moves).

Every timed result is checked against the fp32 torch reference in the same run (max abs error, and
the tolerance of tests/test_kernels.py), so a fast wrong kernel cannot pass unnoticed. Timing: on
CUDA `triton.testing.do_bench` (median; L2 flushed between calls); on CPU a plain timer, and only
the torch paths, since Triton kernels run compiled on CUDA only. Under TRITON_INTERPRET=1 the
kernels also run on CPU, for their correctness check; their times are then meaningless.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from streamer import kernels
from streamer.kernels import adaln, attention_mass, cache_attention, gated_residual, qk_norm_rope, rope
from streamer.kernels.cache_attention import CacheSegment
from streamer.models.rope import rope_cos_sin

SDPA_TARGET = 0.9  # issue 7: Triton cache attention at >= 0.9x the best SDPA backend
# Per-element tolerances |actual - expected| <= atol + rtol * |expected|, as in tests/test_kernels.py.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}
NOTES = {  # why Triton rows are missing or mean nothing, by triton_mode(); compiled needs no note
    "cpu": ("CPU: Triton kernels run compiled on CUDA only, so only the torch paths and SDPA are timed "
            "(TRITON_INTERPRET=1 also runs the kernels, for their correctness check)"),
    "interpreted": ("CPU under TRITON_INTERPRET=1: the Triton kernels ran in the interpreter, checked for "
                    "correctness; their times mean nothing"),
    "cuda": "Triton is not installed (or TRITON_INTERPRET=1 is set): only the torch paths and SDPA are timed",
}


@dataclass(frozen=True)
class KernelShape:
    batch: int
    heads: int
    head_dim: int
    grid: tuple[int, int]       # latent tokens per frame, h x w
    chunk_frames: int           # the chunk's frames: its queries and its own keys
    history: tuple[int, ...]    # history lengths N (frames) to time
    recent_frames: int          # participation scores: queries of these recent frames + the chunk

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


SHAPES = {
    # wan2.1-1.3b at 832x480: 12 heads x 128, 30x52 = 1560 tokens per latent frame, chunks of 3 frames;
    # 9 / 12 / 18 history frames = 12 / 15 / 21 frames of keys with the chunk (21: Self-Forcing's window)
    "full": KernelShape(batch=1, heads=12, head_dim=128, grid=(30, 52), chunk_frames=3, history=(9, 12, 18),
                        recent_frames=4),
    # seconds on a CPU, also under the Triton interpreter; ragged against the interpreter's 16-wide tiles
    "tiny": KernelShape(batch=1, heads=2, head_dim=64, grid=(4, 6), chunk_frames=2, history=(2, 4),
                        recent_frames=1),
}


@dataclass
class Row:
    group: str
    name: str
    ms: float | None = None
    max_err: float | None = None
    ok: bool | None = None      # None: nothing checked (the path was skipped or is the reference)
    tflops: float | None = None
    gbps: float | None = None
    note: str = ""


# ---- timing and checking -----------------------------------------------------------------------

class Timer:
    """Median milliseconds of a call: do_bench on CUDA, a plain timer on CPU."""

    def __init__(self, device: torch.device, repeats: int = 5, warmup: bool = True):
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            return _cuda_ms(fn)
        if self.warmup:  # first-call allocations and one-time set-up
            fn()
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)


def _cuda_ms(fn: Callable[[], object]) -> float:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(3):  # no Triton: CUDA events around each call after a warm-up
        fn()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def compare(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> tuple[float, bool]:
    """(max abs error, every element within atol + rtol * |expected| and finite)."""
    a, e = actual.float(), expected.float().to(actual.device)
    if a.shape != e.shape:
        return float("inf"), False
    diff = (a - e).abs()
    ok = bool((diff <= atol + rtol * e.abs()).all())  # NaN compares False: fails
    return (float(diff.max()) if diff.numel() else 0.0), ok


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def measure(group: str, name: str, fn: Callable[[], object], check: Callable[[object], tuple[float, bool]] | None,
            timer: Timer, flops: float | None = None, nbytes: float | None = None, optional: bool = False,
            note: str = "") -> Row:
    """Run `fn` once (compilation, autotuning, and the result to check), then time it. An error is
    a failed row (or, with `optional`, a path this machine lacks), never the end of the run."""
    row = Row(group, name, note=note)
    try:
        result = fn()
        if check is not None:
            row.max_err, row.ok = check(result)
        del result
        row.ms = timer(fn)
    except Exception as e:  # noqa: BLE001 (one broken path must not hide every other number)
        row.ms, row.note = None, ("unavailable: " if optional else "error: ") + _first_line(e)
        row.ok = None if optional else False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return row
    if flops:
        row.tflops = flops / row.ms / 1e9
    if nbytes:
        row.gbps = nbytes / row.ms / 1e6
    return row


def triton_mode(device: torch.device) -> str | None:
    """'compiled' on CUDA, 'interpreted' on CPU under TRITON_INTERPRET=1, None where kernels cannot run."""
    from streamer.kernels._triton import HAVE_TRITON, INTERPRET

    if not HAVE_TRITON:
        return None
    if device.type == "cuda" and not INTERPRET:
        return "compiled"
    if device.type == "cpu" and INTERPRET:
        return "interpreted"
    return None


# ---- cache attention ---------------------------------------------------------------------------

@dataclass
class AttentionProblem:
    q: torch.Tensor                        # [B, Sq, H, D], already rotated (as the view passes it)
    history: CacheSegment                  # N frames read in place from a cache of N + chunk slots
    chunk: tuple[torch.Tensor, torch.Tensor]  # the chunk's own k (rotated) and v, [B, Sq, H, D]

    @property
    def keys(self) -> int:
        return self.history.num_tokens + self.chunk[0].shape[1]

    def head(self, h: int) -> AttentionProblem:
        one = lambda x: x[..., h:h + 1, :]  # noqa: E731
        hist = self.history
        return AttentionProblem(one(self.q), CacheSegment(one(hist.k), one(hist.v), hist.slots, hist.cos, hist.sin),
                                (one(self.chunk[0]), one(self.chunk[1])))


def attention_problem(shape: KernelShape, n_hist: int, dtype: torch.dtype, device: torch.device,
                      seed: int = 0) -> AttentionProblem:
    """A window cache mid-stream: N + chunk slots, the history's slots wrapped around the ring (not
    in memory order) at large absolute positions, as Self-Forcing's window policy leaves them."""
    g = torch.Generator(device).manual_seed(seed)
    b, h, d, t, c = shape.batch, shape.heads, shape.head_dim, shape.tokens, shape.chunk_frames
    rnd = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(dtype)  # noqa: E731
    num_slots = n_hist + c
    slots = [(n_hist // 2 + i) % num_slots for i in range(n_hist)]
    positions = [100.0 + i for i in range(n_hist)]
    history = CacheSegment.at(rnd(b, num_slots, t, h, d), rnd(b, num_slots, t, h, d), slots, positions)
    return AttentionProblem(rnd(b, c * t, h, d), history, (rnd(b, c * t, h, d), rnd(b, c * t, h, d)))


def exact_attention(p: AttentionProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 reference one head at a time: its score matrix is 0.6 GB per head at full size."""
    parts = [cache_attention.cache_attention_reference(s.q, s.history, [s.chunk])
             for s in (p.head(i) for i in range(p.q.shape[2]))]
    return torch.cat([o for o, _ in parts], dim=2), torch.cat([lse for _, lse in parts], dim=1)


def exact_mass(p: AttentionProblem) -> torch.Tensor:
    """Mean attention per key over heads and queries, fp32, one head at a time."""
    heads = p.q.shape[2]
    return sum(attention_mass.attention_mass_reference(s.q, s.history, [s.chunk])
               for s in (p.head(i) for i in range(heads))) / heads


class TorchViewPath:
    """What CacheView does without the kernel: at a chunk's first step, gather the history slots,
    rotate their keys to their positions and lay them out in a workspace [history | chunk]; at every
    step, copy the chunk's K/V into the tail and call SDPA (through the model's attention swap point,
    [B, S, H, D] transposed views, as the model calls it)."""

    def __init__(self, p: AttentionProblem):
        k, v = p.chunk
        self.p, self.n_hist = p, p.history.num_tokens
        b, s, h, d = k.shape
        self.k_ws = k.new_empty(b, self.n_hist + s, h, d)
        self.v_ws = v.new_empty(b, self.n_hist + s, h, d)
        self.gather()
        self.copy_chunk()

    def gather(self) -> None:
        self.k_ws[:, : self.n_hist], self.v_ws[:, : self.n_hist] = cache_attention.gather_history(self.p.history)

    def copy_chunk(self) -> None:
        self.k_ws[:, self.n_hist:] = self.p.chunk[0]
        self.v_ws[:, self.n_hist:] = self.p.chunk[1]

    def later_step(self) -> torch.Tensor:
        self.copy_chunk()
        return kernels.sdpa(self.p.q, self.k_ws, self.v_ws)

    def first_step(self) -> torch.Tensor:
        self.gather()
        return self.later_step()

    def sdpa_layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v pre-rotated and pre-concatenated, contiguous [B, H, S, D]: SDPA at its best."""
        return tuple(x.transpose(1, 2).contiguous() for x in (self.p.q, self.k_ws, self.v_ws))


def sdpa_backends() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
    return {name: getattr(SDPBackend, attr) for name, attr in names.items() if hasattr(SDPBackend, attr)}


def bench_attention(shape: KernelShape, n_hist: int, dtype: torch.dtype, device: torch.device, timer: Timer,
                    kernels: str | None, kernel_timer: Timer) -> tuple[list[Row], dict]:
    p = attention_problem(shape, n_hist, dtype, device, seed=n_hist)
    sq, sk = p.q.shape[1], p.keys
    group = f"attention N={n_hist} (Sq={sq}, Sk={sk})"
    flops = 4 * shape.batch * shape.heads * sq * sk * shape.head_dim
    ref_out, ref_lse = exact_attention(p)
    atol, rtol = TOL[dtype]
    check = lambda out: compare(out, ref_out, atol, rtol)  # noqa: E731
    rows = []

    if kernels:
        def check_kernel(result):
            err, ok = check(result[0])
            lse_err, lse_ok = compare(result[1], ref_lse, 1e-2, 1e-3)  # the mass pass divides by exp(lse)
            return max(err, lse_err), ok and lse_ok

        # the autotuner's pick over both load paths, then each path alone (TMA only where it can run)
        paths = [(None, "autotuned")] + ([(False, "pointer loads"), (True, "TMA loads")] if _tma_device(device) else [])
        for force, label in paths:
            cache_attention.FORCE_TMA = force
            cache_attention._cache_attention_kernel.cache.clear()  # re-tune within the forced path
            try:
                row = measure(group, f"triton cache_attention (history in place), {label}",
                              lambda: cache_attention.cache_attention(p.q, p.history, [p.chunk]), check_kernel,
                              kernel_timer, flops=flops, note=f"{kernels}; error: max of out and lse")
                best = getattr(cache_attention._cache_attention_kernel, "best_config", None)
                if best is not None and row.ms is not None:
                    row.note += f"; config {best}"
                rows.append(row)
            finally:
                cache_attention.FORCE_TMA = None
                cache_attention._cache_attention_kernel.cache.clear()

    view = TorchViewPath(p)
    rows += bench_sdpa(group, view, check, timer, flops)
    rows.append(measure(group, "torch view, first step (gather + rotate + cat + SDPA)", view.first_step, check,
                        timer, flops=flops))
    rows.append(measure(group, "torch view, later steps (chunk copy + SDPA)", view.later_step, check, timer,
                        flops=flops))
    del view
    rows += bench_mass(group, p, ref_lse, timer, kernels, kernel_timer)
    return rows, _attention_summary(n_hist, sk, rows, compiled=kernels == "compiled")


def _tma_device(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def bench_sdpa(group: str, view: TorchViewPath, check: Callable, timer: Timer, flops: float) -> list[Row]:
    """SDPA alone, each backend forced in turn, on the view's rotated keys in SDPA's own layout."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    q, k, v = view.sdpa_layout()
    rows = []
    for name, backend in sdpa_backends().items():
        with sdpa_kernel([backend]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns why a backend cannot run; the row says it
            rows.append(measure(group, f"sdpa {name} (keys pre-rotated, pre-concatenated)",
                                lambda: F.scaled_dot_product_attention(q, k, v),
                                lambda out: check(out.transpose(1, 2)), timer, flops=flops, optional=True))
    return rows


def _attention_summary(n_hist: int, sk: int, rows: list[Row], compiled: bool) -> dict:
    """The ratios issue 7 asks for; only compiled kernel times (and only correct ones) count."""
    def ms(prefix: str) -> float | None:
        return next((r.ms for r in rows if r.name.startswith(prefix) and r.ms and r.ok is not False), None)

    sdpa = [(r.ms, r.name.split()[1]) for r in rows if r.name.startswith("sdpa ") and r.ms and r.ok]
    best_ms, best = min(sdpa) if sdpa else (None, None)
    triton_ms, first_ms = ms("triton cache_attention") if compiled else None, ms("torch view, first")
    ratio = best_ms / triton_ms if best_ms and triton_ms else None
    return {"history_frames": n_hist, "keys": sk, "triton_ms": triton_ms, "best_sdpa": best, "best_sdpa_ms": best_ms,
            "triton_vs_best_sdpa": ratio, "target": SDPA_TARGET, "met": None if ratio is None else ratio >= SDPA_TARGET,
            "torch_view_first_ms": first_ms, "torch_view_later_ms": ms("torch view, later"),
            "in_place_vs_torch_view_first": first_ms / triton_ms if first_ms and triton_ms else None}


def bench_mass(group: str, p: AttentionProblem, lse: torch.Tensor, timer: Timer, kernels: str | None,
               kernel_timer: Timer) -> list[Row]:
    """The second pass needs the attention's log-sum-exp: the exact one, so its check is its own."""
    expected = exact_mass(p)
    b, sq, h, d = p.q.shape
    flops = 2 * b * h * sq * p.keys * d  # one q . k per (query, key): no P @ V
    check = lambda m: compare(m, expected, 0.02 / p.keys, 2e-2)  # noqa: E731 (2% of a uniform share)
    rows = []
    if kernels:
        rows.append(measure(group, "triton attention_mass (2nd pass from lse)",
                            lambda: attention_mass.attention_mass(p.q, lse, p.history, [p.chunk]), check,
                            kernel_timer, flops=flops, note=kernels))
    rows.append(measure(group, "torch attention_mass_reference (fp32 softmax)",
                        lambda: attention_mass.attention_mass_reference(p.q, p.history, [p.chunk]), check, timer,
                        flops=flops))
    return rows


# ---- participation scores and the fused element-wise kernels ----------------------------------

def bench_participation(shape: KernelShape, dtype: torch.dtype, device: torch.device, timer: Timer,
                        kernels: str | None, kernel_timer: Timer) -> list[Row]:
    """Deep Forcing's scores: recent frames' + the chunk's queries against the largest history's
    keys, each key rotated by its own frame position (a CPU float64 tensor, as the policy keeps it)."""
    g = torch.Generator(device).manual_seed(1)
    n_hist, t = max(shape.history), shape.tokens
    n_q = (shape.recent_frames + shape.chunk_frames) * t
    queries = torch.randn(shape.batch, n_q, shape.heads, shape.head_dim, generator=g, device=device).to(dtype)
    keys = torch.randn(shape.batch, n_hist * t, shape.heads, shape.head_dim, generator=g, device=device).to(dtype)
    positions = torch.arange(n_hist, dtype=torch.float64).repeat_interleave(t) + 100.0
    group = f"participation (Q={n_q}, K={n_hist * t})"
    expected = attention_mass.participation_scores_reference(queries, keys, positions)
    scale = float(expected.abs().max())
    check = lambda s: compare(s, expected, 1e-4 * scale, 1e-4)  # noqa: E731 (a sum of ~1e8 products)
    nbytes = (queries.numel() + keys.numel()) * queries.element_size()
    rows = []
    if kernels:
        rows.append(measure(group, "triton participation_scores",
                            lambda: attention_mass.participation_scores(queries, keys, positions), check,
                            kernel_timer, nbytes=nbytes, note=kernels))
    rows.append(measure(group, "torch participation_scores_reference",
                        lambda: attention_mass.participation_scores_reference(queries, keys, positions), None,
                        timer, nbytes=nbytes, note="the reference"))
    return rows


def bench_elementwise(shape: KernelShape, dtype: torch.dtype, device: torch.device, timer: Timer,
                      kernels: str | None, kernel_timer: Timer) -> list[Row]:
    """The fusions on one chunk's activations [B, F * tokens, H * D]; adaLN vectors per frame, fp32."""
    g = torch.Generator(device).manual_seed(2)
    b, f, dim, hd = shape.batch, shape.chunk_frames, shape.dim, shape.head_dim
    s = f * shape.tokens
    rnd = lambda *size: torch.randn(*size, generator=g, device=device)  # noqa: E731
    x, y = (rnd(b, s, dim) * 3).to(dtype), rnd(b, s, dim).to(dtype)
    wq, wk = rnd(dim).to(dtype), rnd(dim).to(dtype)
    shift, scale, gate = rnd(b, f, dim), rnd(b, f, dim), rnd(b, f, dim)
    cos, sin = rope_cos_sin(torch.arange(100.0, 100.0 + f, dtype=torch.float64), *shape.grid, hd, device=device)
    tcos, tsin = rope_cos_sin(torch.arange(100.0, 100.0 + f, dtype=torch.float64), *shape.grid, hd, device=device,
                              spatial=False)
    xh = x.unflatten(-1, (shape.heads, hd))
    es = x.element_size()
    cases = [
        # name, kernel, reference, bytes one fused pass moves
        ("qk RMSNorm + RoPE", lambda: qk_norm_rope.qk_norm_rope(x, y, wq, wk, cos, sin, shape.heads),
         lambda: qk_norm_rope.qk_norm_rope_reference(x, y, wq, wk, cos, sin, shape.heads),
         4 * s * dim * es + 2 * cos.numel() * 4),
        ("RoPE (the view's temporal rotation)", lambda: rope.rope(xh, tcos, tsin),
         lambda: rope.rope_reference(xh, tcos, tsin), 2 * s * dim * es + 2 * tcos.numel() * 4),
        ("LayerNorm + adaLN modulate", lambda: adaln.layernorm_modulate(x, shift, scale),
         lambda: adaln.layernorm_modulate_reference(x, shift, scale), 2 * s * dim * es + 2 * shift.numel() * 4),
        ("gated residual", lambda: gated_residual.gated_residual(x, y, gate),
         lambda: gated_residual.gated_residual_reference(x, y, gate), 3 * s * dim * es + gate.numel() * 4),
    ]
    atol, rtol = TOL[dtype]
    rows = []
    for name, kernel, reference, nbytes in cases:
        group = f"{name} [{b}, {s}, {dim}]"
        expected = reference()
        check = lambda out, e=expected: _compare_all(out, e, atol, rtol)  # noqa: E731
        if kernels:
            rows.append(measure(group, "triton (fused)", kernel, check, kernel_timer, nbytes=nbytes, note=kernels))
        rows.append(measure(group, "torch reference", reference, None, timer, nbytes=nbytes, note="the reference"))
    return rows


def _compare_all(actual, expected, atol: float, rtol: float) -> tuple[float, bool]:
    """compare() over a tensor or matching tuples of tensors (qk_norm_rope returns q and k)."""
    pairs = list(zip(actual, expected)) if isinstance(expected, tuple) else [(actual, expected)]
    results = [compare(a, e, atol, rtol) for a, e in pairs]
    return max(err for err, _ in results), all(ok for _, ok in results)


# ---- the run and its outputs -------------------------------------------------------------------

def run_kernel_bench(shape: KernelShape, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                     repeats: int = 5, progress: Callable[[str], None] | None = None) -> dict:
    kernels = triton_mode(device)
    timer = Timer(device, repeats)
    # interpreted kernels take ~0.1 s a call and their times mean nothing: one call after the checked one
    kernel_timer = Timer(device, 1, warmup=False) if kernels == "interpreted" else timer
    say = progress or (lambda _: None)
    rows, summary = [], []
    with torch.inference_mode():
        for n_hist in shape.history:
            say(f"cache attention, {n_hist} history frames")
            r, s = bench_attention(shape, n_hist, dtype, device, timer, kernels, kernel_timer)
            rows += r
            summary.append(s)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        say("participation scores")
        rows += bench_participation(shape, dtype, device, timer, kernels, kernel_timer)
        say("fused element-wise kernels")
        rows += bench_elementwise(shape, dtype, device, timer, kernels, kernel_timer)
    checked = [r.ok for r in rows if r.ok is not None]
    return {"shape": asdict(shape), "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "triton_kernels": kernels or "not run",
            "note": NOTES.get(kernels or device.type, NOTES["cuda"]) if kernels != "compiled" else None,
            "rows": [asdict(r) for r in rows], "attention_summary": summary,
            "all_checks_passed": all(checked) and bool(checked)}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _check_text(r: dict) -> str:
    return {True: "ok", False: "FAIL", None: "-"}[r["ok"]]


TABLE = [("group", lambda r: r["group"]), ("implementation", lambda r: r["name"]),
         ("ms", lambda r: _fmt(r["ms"], ".4g")), ("TFLOP/s", lambda r: _fmt(r["tflops"], ".4g")),
         ("GB/s", lambda r: _fmt(r["gbps"], ".4g")), ("max err", lambda r: _fmt(r["max_err"], ".2e")),
         ("check", _check_text), ("note", lambda r: r["note"])]


def summary_lines(result: dict) -> list[str]:
    lines = []
    for s in result["attention_summary"]:
        if s["triton_vs_best_sdpa"] is not None:
            verdict = "met" if s["met"] else "MISSED"
            saved = s["in_place_vs_torch_view_first"]
            lines.append(f"N={s['history_frames']}: triton / best SDPA ({s['best_sdpa']}) = "
                         f"{s['triton_vs_best_sdpa']:.2f}x throughput (target >= {SDPA_TARGET}: {verdict}); "
                         f"torch view first step / triton = {_fmt(saved, '.2f')}x")
        elif s["best_sdpa"]:
            lines.append(f"N={s['history_frames']}: best SDPA {s['best_sdpa']} {s['best_sdpa_ms']:.4g} ms "
                         "(no Triton time to compare)")
    lines.append("all correctness checks passed" if result["all_checks_passed"] else
                 "CORRECTNESS CHECK FAILED: see the rows marked FAIL")
    return lines


def format_table(result: dict) -> str:
    cells = [[fmt(r) for _, fmt in TABLE] for r in result["rows"]]
    header = [name for name, _ in TABLE]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in cells])


def format_markdown(result: dict, machine: dict, command: str) -> str:
    md = [f"Command: `{command}`", "",
          f"Machine: {machine.get('gpu') or machine['cpu']} ({machine['cpu_threads']} threads), torch {machine['torch']}, "
          f"triton {machine.get('triton')}, CUDA {machine.get('cuda')}; {result['dtype']}, Triton kernels: "
          f"{result['triton_kernels']}", ""]
    if result["note"]:
        md += [result["note"], ""]
    md += ["| " + " | ".join(name for name, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    md += ["| " + " | ".join(fmt(r) for _, fmt in TABLE) + " |" for r in result["rows"]]
    md += [""] + [f"- {line}" for line in summary_lines(result)]
    return "\n".join(md) + "\n"


def cmd_kernels(args: argparse.Namespace, command: str) -> int:
    """`streamer bench --kernels`: print the table, write kernels.json and kernels.md to --out."""
    from streamer.tools.bench import machine_info
    from streamer.pipeline import default_device

    device = torch.device(args.device) if args.device else default_device()
    shape = SHAPES[args.kernel_shape or ("full" if device.type == "cuda" else "tiny")]
    if args.kernel_history:
        shape = dataclasses.replace(shape, history=tuple(args.kernel_history))
    dtypes = [d for d in args.dtype if d != "auto"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtypes[0] if dtypes else "bf16"]
    say = (lambda _: None) if args.quiet else (lambda msg: print(f"[kernels] {msg}", flush=True))
    result = run_kernel_bench(shape, device, dtype, repeats=max(1, args.repeats), progress=say)
    machine = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps({"machine": machine, "command": command, **result}, indent=1))
    (out / "kernels.md").write_text(format_markdown(result, machine, command))
    if result["note"]:
        print(result["note"])
    print(format_table(result))
    print("\n".join(summary_lines(result)))
    print(f"wrote {out / 'kernels.json'}, {out / 'kernels.md'}")
    return 0 if result["all_checks_passed"] else 1
