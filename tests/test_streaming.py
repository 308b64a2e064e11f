"""Chunked streaming through the KV cache equals one block-causal full-sequence forward."""

import pytest
import torch

from streamer.models.frames import FrameRule
from streamer.pipeline import Pipeline
from streamer.policies import PolicyError
from streamer.session import Session, StreamConfig


class _Recorder:
    """Wraps model.forward_chunk and records every call of a session."""

    def __init__(self, model):
        self.calls = []
        self._inner = model.forward_chunk
        model.forward_chunk = self

    def __call__(self, x, t, text, view, tracks=None):
        out = self._inner(x, t, text, view, tracks)
        self.calls.append(dict(x=x.clone(), t=t.clone(), out=out.clone(), commit=view.commit, frames=view.plan.frames))
        return out


class _ZeroDecoder:
    frames = FrameRule()

    def new_state(self):
        return None

    def decode(self, latents, state):
        n = latents.shape[2]
        return torch.zeros(1, 3, n * 4, 8, 8)


class _TextStub:
    dim, text_len = 32, 16

    def __init__(self):
        self.table = {}

    def encode(self, prompts):
        g = torch.Generator().manual_seed(len(prompts[0]))
        return torch.stack([torch.randn(16, 32, generator=g) for _ in prompts])


def _pipe(model):
    return Pipeline(model=model, decoder=_ZeroDecoder(), text_encoder=_TextStub(), device=torch.device("cpu"),
                    dtype=torch.float32)


def assert_stream_equals_block_causal(model, rec: _Recorder, chunk: int, n_chunks: int, steps: int,
                                      prompt: str = "a prompt") -> None:
    """The recorded calls of a stream of `n_chunks` chunks equal one block-causal forward: the clean
    passes at t=0 over the generated clean video, and every denoising step as the teacher-forcing
    forward (noisy chunk i attends to clean chunks < i, which the cache holds, and to itself)."""
    assert len(rec.calls) == n_chunks * (steps + 1)
    by_chunk = [rec.calls[i * (steps + 1):(i + 1) * (steps + 1)] for i in range(n_chunks)]
    assert all(c[-1]["commit"] and not any(s["commit"] for s in c[:-1]) for c in by_chunk)
    text = model.encode_text(_TextStub().encode([prompt]))
    clean = torch.cat([c[-1]["x"] for c in by_chunk], dim=2)
    ref = model(clean, torch.zeros(1, chunk * n_chunks), text, chunk_frames=chunk)
    torch.testing.assert_close(torch.cat([c[-1]["out"] for c in by_chunk], dim=2), ref, atol=1e-4, rtol=1e-4)
    for s in range(steps):
        noisy = torch.cat([c[s]["x"] for c in by_chunk], dim=2)
        t = torch.cat([c[s]["t"] for c in by_chunk], dim=1)
        ref = model(noisy, t, text, chunk_frames=chunk, clean_x=clean)
        got = torch.cat([c[s]["out"] for c in by_chunk], dim=2)
        assert got.abs().mean() > 0.05
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def _stream_and_check(model, chunk: int = 3, n_chunks: int = 4) -> None:
    """Stream `n_chunks` chunks of 64x32 through a window of 21 and check them against one forward."""
    rec = _Recorder(model)
    session = Session(_pipe(model), "a prompt", StreamConfig(width=64, height=32, chunk_frames=chunk,
                                                             policy="window", policy_args={"window": 21}, seed=7))
    list(session.stream(chunk * n_chunks))
    assert_stream_equals_block_causal(model, rec, chunk, n_chunks, len(session.timesteps))


@torch.no_grad()
def test_stream_equals_block_causal_teacher_forcing(tiny_model):
    _stream_and_check(tiny_model)


@torch.no_grad()
def test_stream_is_reproducible_and_seeded(tiny_model):
    def run(seed):
        rec = _Recorder(tiny_model)
        s = Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, seed=seed))
        list(s.stream(6))
        tiny_model.forward_chunk = rec._inner
        return torch.cat([c["x"] for c in rec.calls if c["commit"]], dim=2)

    a, b, c = run(1), run(1), run(2)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 0.1


@torch.no_grad()
def test_window_evicts_and_memory_is_bounded(tiny_model):
    session = Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, policy="frame-sink"))
    nbytes = session.cache.nbytes
    for chunk in session.stream(30):
        held = [f for f, _ in session.cache.frames()]
        assert len(held) <= 12
    assert held[:3] == [0, 1, 2] and held[3:] == list(range(21, 30))
    assert session.cache.nbytes == nbytes
    assert sorted(session._latents) == held  # re-cache memory is bounded by the cache too


@torch.no_grad()
def test_prompt_switch_recaches_retained_frames(tiny_model):
    rec = _Recorder(tiny_model)
    session = Session(_pipe(tiny_model), "first", StreamConfig(width=32, height=32, policy="frame-sink"))
    list(session.stream(15))
    n_before = len(rec.calls)
    held = [f for f, _ in session.cache.frames()]
    session.set_prompt("second prompt")
    chunk = session.step()
    assert chunk.prompt == "second prompt"
    replay = [c for c in rec.calls[n_before:] if c["commit"]][:-1]
    assert [f for c in replay for f in c["frames"]] == held
    assert all(float(c["t"].max()) == 0.0 for c in replay)
    with pytest.raises(ValueError, match="empty"):
        session.set_prompt("  ")


def test_impossible_inputs_are_refused(tiny_model):
    with pytest.raises(ValueError, match="not possible"):
        Session(_pipe(tiny_model), "p", StreamConfig(width=30, height=32))
    with pytest.raises(PolicyError, match="sink"):
        Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, policy="frame-sink",
                                                      policy_args={"window": 6, "sink": 4}))
    with pytest.raises(PolicyError, match="choose one of"):
        Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, policy="nope"))


@torch.no_grad()
def test_stream_equals_block_causal_with_absolute_positions():
    """The absolute position embedding (abs_pos_grid) goes on every chunk's tokens the same way in
    the cached stream and in the full block-causal forward."""
    from streamer.models.wan import CausalWanModel, get_config
    from tests.conftest import randomize

    _stream_and_check(randomize(CausalWanModel(get_config("tiny", abs_pos_grid=(2, 4)))).eval(), n_chunks=3)
