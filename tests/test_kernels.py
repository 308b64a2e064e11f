"""Every Triton kernel against its torch reference.

On CPU they run under TRITON_INTERPRET=1 (set by conftest.py), which executes each tile
iteration in numpy (milliseconds each), so shapes are tiny: 2 heads of 32-64 channels, tens of
tokens, tiles of 16 (ragged tails and multi-tile loops are exercised). On a GPU run them compiled:
`TRITON_INTERPRET=0 pytest tests/test_kernels.py`; the same tests then run on CUDA, plus the
full-size ones at the wan2.1-1.3b shape.
"""

import pytest
import torch

from streamer import kernels
from streamer.models.rope import apply_rope, rope_cos_sin

pytest.importorskip("triton", reason="Triton is not installed (the kernels are tested under its interpreter)")

from streamer.kernels import attention_mass as am  # noqa: E402
from streamer.kernels import cache_attention as ca  # noqa: E402
from streamer.kernels.adaln import layernorm_modulate, layernorm_modulate_reference  # noqa: E402
from streamer.kernels.gated_residual import gated_residual, gated_residual_reference  # noqa: E402
from streamer.kernels._triton import INTERPRET  # noqa: E402
from streamer.kernels.qk_norm_rope import qk_norm_rope, qk_norm_rope_reference  # noqa: E402
from streamer.kernels.rope import rope  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET=0 and no CUDA device: the kernels cannot run", allow_module_level=True)
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="full size: compiled kernels on a GPU only")

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
       torch.float16: dict(atol=4e-3, rtol=4e-3)}


def _close(actual, expected, dtype):
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype])


def _problem(b=1, h=2, d=32, tokens=10, num_slots=5, slots=(3, 0, 4), positions=(1e5, 2.5, -3.0), sq=19,
             seg_lens=(7, 0), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)  # noqa: E731
    q = rnd(b, sq, h, d)
    history = ca.CacheSegment.at(rnd(b, num_slots, tokens, h, d), rnd(b, num_slots, tokens, h, d), slots, positions)
    segments = [(rnd(b, n, h, d), rnd(b, n, h, d)) for n in seg_lens]
    return q, history, segments


CASES = {
    # ragged everything: 10 tokens per slot and 19 queries over tiles of 16, slots out of order,
    # a huge, a fractional and a negative position, an empty plain segment
    "ragged": {},
    "repeated-slot-two-segments": dict(slots=(1, 1, 2, 0), positions=(0.0, 7.0, 3.25, 1.0), seg_lens=(16, 33)),
    "no-history-slots": dict(slots=(), positions=(), seg_lens=(5, 21)),
    "history-only": dict(seg_lens=(), tokens=16, sq=16),
    "batch2-dim64": dict(b=2, d=64, tokens=5, sq=3, seg_lens=(4,)),
}


@pytest.fixture(params=[False, True], ids=["pointer-loads", "tma-loads"])
def load_path(request):
    """Both ways the attention kernel loads K/V tiles (the autotuner picks one per GPU); its cached
    choices are dropped so that the forced path is the one that runs."""
    ca.FORCE_TMA = request.param
    ca._cache_attention_kernel.cache.clear()
    yield request.param
    ca.FORCE_TMA = None
    ca._cache_attention_kernel.cache.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_cache_attention_matches_reference(case, dtype, load_path):
    q, history, segments = _problem(dtype=dtype, **CASES[case])
    out, lse = ca.cache_attention(q, history, segments)
    assert ca._cache_attention_kernel.best_config.kwargs["USE_TMA"] == load_path
    ref_out, ref_lse = ca.cache_attention_reference(q, history, segments)
    assert out.dtype == dtype and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    _close(out, ref_out, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=1e-2 if dtype != torch.float32 else 1e-5, rtol=1e-4)


def test_cache_attention_fp16_and_custom_scale():
    q, history, segments = _problem(dtype=torch.float16, slots=(2, 4), positions=(5.0, 6.0))
    out, lse = ca.cache_attention(q, history, segments, scale=0.3)
    ref_out, ref_lse = ca.cache_attention_reference(q, history, segments, scale=0.3)
    _close(out, ref_out, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=1e-2, rtol=1e-3)


def test_cache_attention_without_keys_is_zero_with_minus_infinite_lse():
    q = torch.randn(1, 5, 2, 32, device=DEVICE)
    kc = torch.randn(1, 2, 4, 2, 32, device=DEVICE)
    empty = ca.CacheSegment.at(kc, kc, [], [])
    out, lse = ca.cache_attention(q, empty)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))


def test_only_relative_positions_matter_even_at_1e5():
    """Shifting every position (queries and history) by 1e5 leaves the output unchanged: angles are
    exact (float64 on the host) and the kernel's temporal rotation is applied relative to q's."""
    torch.manual_seed(1)
    b, h, d, tokens = 1, 2, 32, 6
    kc, vc = torch.randn(b, 4, tokens, h, d, device=DEVICE), torch.randn(b, 4, tokens, h, d, device=DEVICE)
    q = torch.randn(b, 12, h, d, device=DEVICE)
    outs = []
    for shift in (0.0, 1e5 + 0.5):
        hist = ca.CacheSegment.at(kc, vc, [0, 2, 3], [shift + p for p in (0.0, 1.0, 2.0)])
        cos, sin = rope_cos_sin(torch.tensor([shift + 3.0, shift + 4.0], dtype=torch.float64), 2, 3, d,
                                device=DEVICE, spatial=False)
        outs.append(ca.cache_attention(apply_rope(q, cos, sin), hist)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["ragged", "repeated-slot-two-segments", "no-history-slots", "batch2-dim64"])
def test_attention_mass_from_saved_lse(case, dtype):
    q, history, segments = _problem(dtype=dtype, **CASES[case])
    _, lse = ca.cache_attention(q, history, segments)
    mass = am.attention_mass(q, lse, history, segments)
    ref = am.attention_mass_reference(q, history, segments)
    torch.testing.assert_close(mass, ref, atol=2e-3 if dtype == torch.bfloat16 else 1e-6, rtol=1e-2)
    torch.testing.assert_close(mass.sum(-1), torch.ones(q.shape[0], device=DEVICE), atol=1e-2, rtol=0)


@pytest.mark.parametrize("positions", [None, "mixed"])
def test_participation_scores(positions):
    g = torch.Generator().manual_seed(2)
    queries, keys = (torch.randn(2, n, 2, 32, generator=g).to(DEVICE) for n in (9, 37))
    pos = torch.tensor([1e5] * 10 + [3.5] * 20 + [0.0] * 7, dtype=torch.float64) if positions else None
    ref = am.participation_scores_reference(queries, keys, pos)
    torch.testing.assert_close(am.participation_scores(queries, keys, pos), ref, atol=1e-4, rtol=1e-5)


def test_participation_reference_is_the_papers_score():
    """The reference (query sum first, O(Q + K)) equals Deep Forcing's definition, sum over queries and
    heads of q . R(p_j) k_j, written out pair by pair."""
    g = torch.Generator().manual_seed(4)
    queries, keys = torch.randn(1, 6, 2, 32, generator=g), torch.randn(1, 11, 2, 32, generator=g)
    pos = torch.arange(11, dtype=torch.float64) * 3.5
    cos, sin = rope_cos_sin(pos, 1, 1, 32, spatial=False)
    rotated = apply_rope(keys, cos, sin)
    naive = torch.tensor([sum(float((queries[0, i] * rotated[0, j]).sum()) for i in range(6)) for j in range(11)])
    torch.testing.assert_close(am.participation_scores_reference(queries, keys, pos), naive, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope(dtype):
    heads, d, grid = 3, 32, (2, 3)  # H * D = 96: not a power of two, the row block is masked
    g = torch.Generator().manual_seed(3)
    positions = torch.tensor([0.0, 2.5, 1e5], dtype=torch.float64)
    cos, sin = rope_cos_sin(positions, *grid, d, device=DEVICE)
    s = positions.numel() * grid[0] * grid[1]
    q, k = (torch.randn(2, s, heads * d, generator=g).to(DEVICE, dtype) * 3 for _ in range(2))
    wq, wk = (torch.randn(heads * d, generator=g).to(DEVICE, dtype) for _ in range(2))
    got = qk_norm_rope(q, k, wq, wk, cos, sin, heads)
    ref = qk_norm_rope_reference(q, k, wq, wk, cos, sin, heads)
    for a, r in zip(got, ref):
        assert a.shape == (2, s, heads, d) and a.dtype == dtype
        _close(a, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope(dtype):
    """The chunk's temporal rotation as the cache view applies it, on a non-contiguous view of q."""
    heads, d, grid = 3, 32, (2, 3)
    g = torch.Generator().manual_seed(4)
    positions = torch.tensor([0.0, 2.5, 1e5], dtype=torch.float64)
    cos, sin = rope_cos_sin(positions, *grid, d, device=DEVICE, spatial=False)
    s = positions.numel() * grid[0] * grid[1]
    x = (torch.randn(2, s, heads, 2 * d, generator=g) * 3).to(DEVICE, dtype)[..., :d]  # strided heads
    got = rope(x, cos, sin)
    assert got.shape == x.shape and got.dtype == dtype
    _close(got, apply_rope(x, cos, sin), dtype)
    assert not torch.equal(got, x)  # the rotation did something


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layernorm_modulate(dtype):
    g = torch.Generator().manual_seed(4)
    b, n_frames, tpf, d = 2, 3, 5, 96
    x = (torch.randn(b, n_frames * tpf, d, generator=g) * 4 + 1).to(DEVICE, dtype)
    shift, scale = (torch.randn(b, n_frames, d, generator=g).to(DEVICE) for _ in range(2))
    out = layernorm_modulate(x, shift, scale)
    assert out.dtype == dtype
    _close(out, layernorm_modulate_reference(x, shift, scale), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_residual(dtype):
    g = torch.Generator().manual_seed(5)
    b, n_frames, tpf, d = 2, 3, 5, 96
    x, y = (torch.randn(b, n_frames * tpf, d, generator=g).to(DEVICE, dtype) for _ in range(2))
    gate = torch.randn(b, n_frames, d, generator=g).to(DEVICE)
    out = gated_residual(x, y, gate)
    assert out.dtype == dtype
    # fp32 math as the reference; the interpreter rounds fp32 -> bf16 by truncation (CUDA: to nearest
    # even), so bf16 results may sit one bf16 step (2^-7 relative) away there (FMA on CUDA: 1 fp32 ulp)
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-6, rtol=2**-7)
    torch.testing.assert_close(out, gated_residual_reference(x, y, gate), **tol)


def test_dispatch_picks_torch_on_cpu_unless_forced():
    x = torch.randn(1, 6, 64)  # on CPU: auto mode never runs the kernels there
    assert kernels.get_mode() == "auto" and not kernels.use_triton(x)
    shift, scale = torch.randn(1, 2, 64), torch.randn(1, 2, 64)
    try:
        kernels.set_mode("triton")
        assert kernels.use_triton(x)
        fused = kernels.run_layernorm_modulate(x.to(DEVICE), shift.to(DEVICE), scale.to(DEVICE)).cpu()
        kernels.set_mode("torch")
        assert not kernels.use_triton(x)
    finally:
        kernels.set_mode("auto")
    torch.testing.assert_close(fused, kernels.run_layernorm_modulate(x, shift, scale), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        kernels.set_mode("fast")


def test_triton_attention_backend_matches_sdpa():
    q, k, v = (torch.randn(1, n, 2, 32, device=DEVICE) for n in (9, 21, 21))
    mask = torch.rand(9, 21, device=DEVICE) > 0.3
    mask[:, 0] = True
    expected = [kernels.attention(q, k, v), kernels.attention(q, k, v, mask)]
    try:
        kernels.set_mode("triton")
        got = [kernels.attention(q, k, v), kernels.attention(q, k, v, mask)]  # a mask falls back to SDPA
    finally:
        kernels.set_mode("auto")
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


def test_kernels_package_imports_without_triton():
    """The CPU path must not need Triton: import streamer (cache, kernels, references) with it hidden."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, streamer.cache\n"
            "from streamer import kernels\n"
            "from streamer.kernels import adaln, attention_mass, cache_attention, gated_residual, qk_norm_rope\n"
            "assert not kernels.triton_available()\n"
            "x = torch.randn(1, 4, 8)\n"
            "kernels.run_layernorm_modulate(x, torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))\n"
            "q = torch.randn(1, 3, 2, 16)\n"
            "kernels.run_cache_attention(q, None, [(q, q)])\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"TRITON_INTERPRET": "0", "PATH": ""})


@pytest.mark.skipif(DEVICE != "cpu", reason="the tiny stream runs on CPU; on a GPU the bench covers it")
@torch.no_grad()
def test_stream_with_triton_backend_equals_torch(tiny_model):
    """End to end: a tiny-model stream under Deep Forcing (sinks re-aligned, participative
    compression at the third chunk, attention mass recorded; cross-attention through the kernel too)
    gives the same latents and masses through the kernels as through the workspace."""
    name, knobs = "deep-forcing", {"window": 9, "sink": 2, "recent": 2, "budget": 5}
    from streamer.sampler import SamplerConfig
    from streamer.session import Session, StreamConfig
    from tests.test_streaming import _pipe

    def run(backend: str):
        kernels.set_mode("triton" if backend == "triton" else "auto")
        try:
            session = Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, policy=name, policy_args=knobs,
                                                                   sampler=SamplerConfig(steps=(1000, 500)), seed=3))
            session.record_attention = True
            chunks = [session.step() for _ in range(3)]
            return [session._latents[f] for f in sorted(session._latents)], chunks
        finally:
            kernels.set_mode("auto")

    ref_latents, ref_chunks = run("torch")
    latents, chunks = run("triton")
    assert chunks[-1].plan.compression is not None
    for a, r in zip(latents, ref_latents):
        torch.testing.assert_close(a, r, atol=2e-4, rtol=2e-4)
    for c, rc in zip(chunks, ref_chunks):
        assert c.plan.history_positions == rc.plan.history_positions
        torch.testing.assert_close(c.attention_mass, rc.attention_mass, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("policy_name,knobs", [
    ("deep-sink", {"window": 6, "sink": 2}),
    ("deep-forcing", {"window": 9, "sink": 1, "recent": 1, "budget": 4}),
])
def test_cache_view_fast_path_equals_workspace(policy_name, knobs):
    """CacheView answers the same through the kernel (history read in place, rotated in-kernel,
    compression and attention mass included) as through its rotated workspace."""
    from streamer.cache import CacheView, KVCache
    from streamer.policies import make_policy

    grid, heads, hd, layers = (2, 3), 2, 32, 2
    tpf = grid[0] * grid[1]
    g = torch.Generator().manual_seed(6)
    rnd = lambda n: torch.randn(1, n * tpf, heads, hd, generator=g).to(DEVICE)  # noqa: E731
    policy = make_policy(policy_name, knobs, chunk=1)
    cache = KVCache(layers, policy.num_slots(1), tpf, heads, hd, store_queries=policy.needs_queries,
                    compressed_tokens=policy.compressed_tokens(tpf), device=DEVICE)
    compressed_seen = False
    for f in range(7):
        plan = policy.plan(cache, [f])
        compressed_seen |= plan.compression is not None
        q, k, v = rnd(1), rnd(1), rnd(1)
        outputs = {}
        for backend in ("torch", "triton"):
            saved = (cache.ck.clone(), cache.cv.clone(), cache.c_frame.clone(), cache.c_count)
            view = CacheView(cache, plan, grid, hd, 10000.0)
            view.record_mass = True
            kernels.set_mode("triton" if backend == "triton" else "auto")
            try:
                outputs[backend] = [(view(layer, q, k, v), view.mass[layer]) for layer in range(layers)]
            finally:
                kernels.set_mode("auto")
            if backend == "torch":  # the compression must run again, from the same state
                cache.ck, cache.cv, cache.c_frame, cache.c_count = saved
        for (out, mass), (ref, ref_mass) in zip(outputs["triton"], outputs["torch"]):
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
            torch.testing.assert_close(mass, ref_mass, atol=1e-6, rtol=1e-5)
        view.commit = True
        for layer in range(layers):
            cache.write(layer, plan.write_slots, k, v, q)  # the view gets q/k spatially rotated: stored as they are
        policy.after_commit(cache, plan)
    assert compressed_seen == (policy_name == "deep-forcing")


# ---- full size, compiled on a GPU (the H100 half of issue 7) ----------------------------------

@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cache_attention_full_size(dtype):
    """wan2.1-1.3b at 832x480: 12 heads x 128, a chunk of 3 x 1560 queries, 18 history frames of
    1560 tokens (sinks re-aligned: positions out of order) plus 2 frames of compressed tokens."""
    g = torch.Generator().manual_seed(7)
    b, h, d, tpf, n_slots = 1, 12, 128, 1560, 21
    rnd = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)  # noqa: E731
    q = rnd(b, 3 * tpf, h, d)
    slots = list(range(18))[::-1]
    history = ca.CacheSegment.at(rnd(b, n_slots, tpf, h, d), rnd(b, n_slots, tpf, h, d), slots,
                                 [float(p) for p in range(100, 118)])
    segments = [(rnd(b, 2 * tpf, h, d), rnd(b, 2 * tpf, h, d)), (rnd(b, 3 * tpf, h, d), rnd(b, 3 * tpf, h, d))]
    out, lse = ca.cache_attention(q, history, segments)
    mass = am.attention_mass(q, lse, history, segments)
    for head in range(h):  # the reference one head at a time: its score matrix is 0.7 GB per head
        one = lambda x: x[..., head:head + 1, :]  # noqa: E731
        hist = ca.CacheSegment(one(history.k), one(history.v), history.slots, history.cos, history.sin)
        segs = [(one(k), one(v)) for k, v in segments]
        ref_out, ref_lse = ca.cache_attention_reference(one(q), hist, segs)
        _close(one(out), ref_out, dtype)
        torch.testing.assert_close(lse[:, head:head + 1], ref_lse, atol=1e-2, rtol=1e-3)
    ref_mass = sum(am.attention_mass_reference(
        q[..., i:i + 1, :], ca.CacheSegment(history.k[..., i:i + 1, :], history.v[..., i:i + 1, :], history.slots,
                                            history.cos, history.sin),
        [(k[..., i:i + 1, :], v[..., i:i + 1, :]) for k, v in segments]) for i in range(h)) / h
    torch.testing.assert_close(mass, ref_mass, atol=1e-6, rtol=2e-2)


@cuda_only
def test_fused_elementwise_full_size():
    g = torch.Generator().manual_seed(8)
    b, n_frames, tpf, heads, d = 1, 3, 1560, 12, 128
    dim, s = heads * d, n_frames * tpf
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE)  # noqa: E731
    x, y = rnd(b, s, dim).bfloat16(), rnd(b, s, dim).bfloat16()
    shift, scale, gate = rnd(b, n_frames, dim), rnd(b, n_frames, dim), rnd(b, n_frames, dim)
    _close(layernorm_modulate(x, shift, scale), layernorm_modulate_reference(x, shift, scale), torch.bfloat16)
    _close(gated_residual(x, y, gate), gated_residual_reference(x, y, gate), torch.bfloat16)
    cos, sin = rope_cos_sin(torch.arange(100.0, 103.0, dtype=torch.float64), 30, 52, d, device=DEVICE)
    w = rnd(dim).bfloat16()
    for a, r in zip(qk_norm_rope(x, y, w, w, cos, sin, heads), qk_norm_rope_reference(x, y, w, w, cos, sin, heads)):
        _close(a, r, torch.bfloat16)


@cuda_only
@pytest.mark.parametrize("policy,knobs", [("window", {"window": 6}),
                                          ("deep-forcing", {"window": 9, "sink": 2, "recent": 2, "budget": 5})])
@torch.no_grad()
def test_stream_full_size_with_kernels_matches_torch(policy, knobs):
    """The whole streaming path at 832x480 in bf16 (two wan2.1-1.3b blocks, random weights), with
    every kernel (`--attention triton`) against all-PyTorch (`--attention torch`): evictions, and for
    deep-forcing sinks, compression and recorded attention mass."""
    from streamer.models.wan import CausalWanModel, get_config
    from streamer.pipeline import Pipeline
    from streamer.session import Session, StreamConfig
    from tests.conftest import randomize

    class ZeroDecoder:
        def new_state(self):
            return None

        def decode(self, latents, state):
            return torch.zeros(1, 3, latents.shape[2] * 4, 8, 8)

    class TextStub:
        def encode(self, prompts):
            g = torch.Generator().manual_seed(0)
            return torch.randn(len(prompts), 64, 4096, generator=g)

    model = randomize(CausalWanModel(get_config("wan2.1-1.3b", num_layers=2)), std=0.02).to(DEVICE, torch.bfloat16)
    pipe = Pipeline(model=model, decoder=ZeroDecoder(), text_encoder=TextStub(), device=torch.device(DEVICE),
                    dtype=torch.bfloat16)
    latents, masses = {}, {}
    try:
        for path in ("torch", "triton"):
            kernels.select(path)
            session = Session(pipe, "p", StreamConfig(width=832, height=480, policy=policy, policy_args=knobs, seed=5))
            session.record_attention = True
            chunks = [session.step() for _ in range(4)]
            latents[path] = torch.stack([session._latents[f].float() for f in sorted(session._latents)])
            masses[path] = [c.attention_mass for c in chunks]
    finally:
        kernels.select("torch")
    rel = (latents["triton"] - latents["torch"]).norm() / latents["torch"].norm()
    assert rel < 2e-2, f"relative difference {rel:.3g} between the kernel and torch streams"
    for a, b in zip(masses["triton"], masses["torch"]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=5e-2)


def test_attention_kernel_takes_half_precision_only_unless_forced(monkeypatch):
    """On CUDA fp32 attention stays with torch (the kernel has no tensor-core path for exact fp32)."""
    monkeypatch.setattr(kernels, "use_triton", lambda x: True)  # as on a CUDA device in auto mode
    assert kernels.use_attention_kernel(torch.zeros(1, dtype=torch.bfloat16))
    assert kernels.use_attention_kernel(torch.zeros(1, dtype=torch.float16))
    assert not kernels.use_attention_kernel(torch.zeros(1, dtype=torch.float32))
    kernels.set_mode("triton")
    assert kernels.use_attention_kernel(torch.zeros(1, dtype=torch.float32))


def test_top_level_name_kernels_left_to_its_distribution(tmp_path):
    """Run from a checkout, the repository root is on sys.path and this package's folder is importable
    as a plain `kernels`, the name of Hugging Face's distribution that transformers >= 5.25 imports at
    start-up. A stand-in distribution must win that name; `streamer.kernels` must stay ours."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("OWNER = 'hub'\n")
    (site / "kernels" / "layer.py").write_text("NAME = 'layer'\n")
    (site / "kernels-0.19.1.dist-info").mkdir()
    (site / "kernels-0.19.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    root = Path(__file__).resolve().parents[1]
    probe = ("import kernels, kernels.layer; from streamer import kernels as ours; "
             "print(kernels.OWNER, kernels.layer.NAME, ours.get_mode(), ours.__name__)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hub", "layer", "auto", "streamer.kernels"]
