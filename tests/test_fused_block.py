"""The model's blocks run through the kernel dispatchers of `streamer.kernels`.

The Triton kernels themselves are checked against their references in test_kernels.py; here the
whole tiny model is run with the kernels (under TRITON_INTERPRET=1 on CPU) and with the references,
full clip and streamed, and the block is checked to call the dispatchers at all.
"""

import importlib.util
import os

import pytest
import torch

from streamer import kernels
from streamer.models.rope import apply_rope, rope_cos_sin
from streamer.sampler import SamplerConfig
from streamer.session import Session, StreamConfig
from tests.test_streaming import _pipe

needs_interpreter = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs the Triton kernels on CPU tensors: needs Triton and TRITON_INTERPRET=1",
)
# Deep Forcing: sinks, recent frames and participative compression (at the third chunk), with the
# cache storing queries: every way q and k reach the cache view.
POLICY = "deep-forcing", {"window": 9, "sink": 2, "recent": 2, "budget": 5}


@pytest.fixture
def kernel_mode():
    """`streamer.kernels.set_mode` for the test; the mode is back to "auto" afterwards whatever happens."""
    try:
        yield kernels.set_mode
    finally:
        kernels.set_mode("auto")


def _clip(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, clean = torch.randn(1, 16, 6, 4, 4, generator=g), torch.randn(1, 16, 6, 4, 4, generator=g)
    return x, clean, torch.rand(1, 6, generator=g) * 1000, torch.randn(1, 16, 32, generator=g)


def _stream(model, n_chunks: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Latents and attention masses of a short stream (2 sampler steps + the commit pass per chunk)."""
    name, knobs = POLICY
    session = Session(_pipe(model), "p", StreamConfig(width=32, height=32, policy=name, policy_args=knobs,
                                                      sampler=SamplerConfig(steps=(1000, 500)), seed=3))
    session.record_attention = True
    chunks = [session.step() for _ in range(n_chunks)]
    assert chunks[-1].plan.compression is not None
    return [session._latents[f] for f in sorted(session._latents)], [c.attention_mass for c in chunks]


@needs_interpreter
@torch.no_grad()
def test_full_clip_with_kernels_equals_references(tiny_model, kernel_mode):
    x, clean, t, text = _clip()
    outputs = {}
    for mode in ("torch", "triton"):
        kernel_mode(mode)
        outputs[mode] = [tiny_model(x, t, text, chunk_frames=3),
                         tiny_model(x, t, text, chunk_frames=3, clean_x=clean)]  # teacher forcing
    assert outputs["torch"][0].abs().mean() > 0.05
    for got, ref in zip(outputs["triton"], outputs["torch"]):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@needs_interpreter
@torch.no_grad()
def test_stream_with_kernels_equals_references(tiny_model, kernel_mode):
    """Attention stays on SDPA and the cache view on its workspace path: only the block's fused
    kernels differ (test_kernels.py runs the stream with the attention kernel too)."""
    kernel_mode("torch")
    ref_latents, ref_masses = _stream(tiny_model)
    kernel_mode("triton")
    latents, masses = _stream(tiny_model)
    for a, r in zip(latents, ref_latents):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    for a, r in zip(masses, ref_masses):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_blocks_call_the_dispatchers(tiny_model, kernel_mode, monkeypatch):
    """Every block norm, modulate, residual and q/k norm goes through `streamer.kernels` (here to the
    torch references), and q/k are rotated by what the self-attention callback declares as qk_rope."""
    from streamer.kernels import adaln, gated_residual, qk_norm_rope

    calls: dict[str, list] = {"modulate": [], "residual": [], "qk": []}

    def spy(module, name: str, key: str, record=lambda *a: None):
        inner = getattr(module, name)

        def wrapped(*args):
            calls[key].append(record(*args))
            return inner(*args)

        monkeypatch.setattr(module, name, wrapped)

    spy(adaln, "layernorm_modulate_reference", "modulate")
    spy(gated_residual, "gated_residual_reference", "residual")
    spy(qk_norm_rope, "qk_norm_rope_reference", "qk", record=lambda q, k, wq, wk, cos, sin, *_: cos)
    kernel_mode("torch")
    layers = tiny_model.config.num_layers

    x, _, t, text = _clip()
    tiny_model(x, t, text, chunk_frames=3)
    assert len(calls["modulate"]) == 2 * layers + 1  # norm1, norm3 per block, and the head
    assert len(calls["residual"]) == 2 * layers
    full_cos, _ = rope_cos_sin(torch.arange(6.0, dtype=torch.float64), 2, 2, tiny_model.config.head_dim)
    assert len(calls["qk"]) == layers and all(torch.equal(c, full_cos) for c in calls["qk"])

    for v in calls.values():
        v.clear()
    session = Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, sampler=SamplerConfig(steps=(1000,))))
    views = []
    forward_chunk = tiny_model.forward_chunk
    monkeypatch.setattr(tiny_model, "forward_chunk", lambda x, t, text, view, tracks=None: (
        views.append(view), forward_chunk(x, t, text, view, tracks))[1])
    session.step()  # one sampler step + the commit pass
    assert len(views) == 2 and len(calls["qk"]) == 2 * layers
    assert len(calls["modulate"]) == 2 * (2 * layers + 1) and len(calls["residual"]) == 2 * 2 * layers
    spatial_cos, _ = views[0].qk_rope  # the view asks for the spatial rotation only (what the cache stores)
    assert all(c is spatial_cos for c in calls["qk"])


def test_cache_view_split_rotation_is_the_full_rotation():
    """The model's spatial rotation (`qk_rope`) then the view's temporal one equal the full RoPE of
    the chunk's positions bit for bit, in fp32 and bf16: streaming numbers do not change."""
    from streamer.cache import CacheView, KVCache
    from streamer.policies import ChunkPlan

    grid, heads, hd = (2, 3), 2, 32
    positions = [7.0, 8.0, 1e5 + 0.5]
    plan = ChunkPlan(frames=[7, 8, 9], positions=positions, history_slots=[], history_positions=[], write_slots=[])
    view = CacheView(KVCache(1, 3, grid[0] * grid[1], heads, hd), plan, grid, hd, 10000.0)
    full = rope_cos_sin(torch.tensor(positions, dtype=torch.float64), *grid, hd)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3 * grid[0] * grid[1], heads, hd).to(dtype)
        split = apply_rope(apply_rope(x, *view.qk_rope), view.chunk_cos, view.chunk_sin)
        assert torch.equal(split, apply_rope(x, *full))


def test_model_runs_without_triton():
    """The dispatchers' CPU path needs no Triton: a clip forward and a streamed chunk with it hidden."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from streamer.cache import CacheView, KVCache\n"
            "from streamer.models.wan import CausalWanModel, get_config\n"
            "from streamer.policies import make_policy\n"
            "m = CausalWanModel(get_config('tiny')).eval()\n"
            "x, t, text = torch.randn(1, 16, 3, 4, 4), torch.zeros(1, 3), m.encode_text(torch.randn(1, 16, 32))\n"
            "m(x, t, text, chunk_frames=3)\n"
            "policy = make_policy('window')\n"
            "cache = KVCache(2, policy.num_slots(3), 4, 2, 32)\n"
            "m.forward_chunk(x, t, text, CacheView(cache, policy.plan(cache, [0, 1, 2]), (2, 2), 32, 1e4))\n"
            "assert 'triton' not in [n.split('.')[0] for n, mod in sys.modules.items() if mod is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"TRITON_INTERPRET": "0", "PATH": ""})
