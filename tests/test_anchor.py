"""The drift anchor (`streamer.anchor`): each chunk's median latent cell, per channel, held at the
stream's first chunk's, and the still cells held half way back to it (the hold), applied before the
clean pass; a prompt switch lets go until it settles."""

import pytest
import torch

import streamer.anchor as anchor_mod
from streamer.anchor import SETTLE_CHUNKS, DriftAnchor, anchor_latents, median_offset
from streamer.pipeline import Pipeline
from streamer.sampler import SamplerConfig
from streamer.session import Session, StreamConfig
from tests.test_streaming import _Recorder

STEPS = SamplerConfig(steps=(1000, 500))


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(preset="tiny", device="cpu", dtype=torch.float32)


def _config(**kw):
    return StreamConfig(**{"width": 32, "height": 32, "sampler": STEPS, "policy": "deep-sink",
                           "policy_args": {"window": 9, "sink": 3}, "seed": 5, **kw})


def test_a_drifted_still_background_is_put_back_and_a_sprite_is_left_as_drawn():
    """A still background drifted by an offset per channel and frame, with a sprite over 30% of the
    cells: the median finds the drift, the background is put back to the reference (the drift off,
    and half its own small change: the hold), the sprite's cells (far from the reference) are left
    as they were."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 4, 1, 10, 10, generator=g)
    drift = torch.randn(1, 4, 3, 1, 1, generator=g) * 0.1
    drift[:, 0] += 1.0  # above BACKGROUND_RMS: cells are judged once the drift is off, not before
    sprite = torch.zeros(1, 1, 1, 10, 10, dtype=torch.bool)
    sprite[..., :3, :] = True  # 30 of 100 cells
    noise = torch.randn(1, 4, 3, 10, 10, generator=g) * 0.05  # a background cell's own change
    x = ref + drift + noise + 5.0 * sprite
    assert torch.allclose(median_offset(ref + drift + 5.0 * sprite, ref), drift, atol=1e-6)
    fixed = anchor_latents(x, ref)
    kept = median_offset(x, ref)
    assert torch.allclose(fixed, torch.where(sprite, x, x - kept - anchor_mod.HOLD * (x - ref - kept)), atol=1e-6)
    back = (fixed - ref)[..., 3:, :]  # the background: back at the reference, its own change halved
    assert (back - (1 - anchor_mod.HOLD) * noise[..., 3:, :]).abs().max() < 0.05
    assert back.pow(2).mean().sqrt() < 0.6 * noise.pow(2).mean().sqrt()
    assert fixed.dtype == x.dtype and anchor_latents(x.bfloat16(), ref).dtype == torch.bfloat16
    for a, b in ((x, ref[:, :, :, :5]), (x, ref.expand(1, 4, 2, 10, 10)), (x[0], ref)):
        with pytest.raises(ValueError, match="drift anchor"):
            median_offset(a, b)


def test_only_still_cells_are_held_a_changing_one_keeps_its_change():
    """Three kinds of cell against one reference, no drift: still (under HOLD_RMS) moves HOLD of the
    way back; changing (between HOLD_RMS and BACKGROUND_RMS, a sprite's faint edge or a trail still
    fading) and a sprite's (over BACKGROUND_RMS) are left as drawn."""
    ref = torch.zeros(1, 4, 1, 9, 9)
    x = torch.zeros(1, 4, 1, 9, 9)
    x[..., 0, 0] = 0.8 * anchor_mod.HOLD_RMS  # RMS over channels: the value itself
    x[..., 0, 1] = 0.5 * (anchor_mod.HOLD_RMS + anchor_mod.BACKGROUND_RMS)
    x[..., 0, 2] = 2.0 * anchor_mod.BACKGROUND_RMS
    out = anchor_latents(x, ref)  # the median cell is 0: no drift
    assert torch.allclose(out[..., 0, 0], (1 - anchor_mod.HOLD) * x[..., 0, 0])
    assert torch.equal(out[..., 0, 1:3], x[..., 0, 1:3]) and torch.equal(out[..., 1:, :], x[..., 1:, :])


def test_the_anchor_takes_its_reference_then_lets_go_at_a_switch():
    anchor = DriftAnchor()
    chunks = [torch.full((1, 2, 3, 4, 4), float(k)) for k in range(8)]
    assert anchor.apply(chunks[0]) is chunks[0]  # the first chunk is the reference, unchanged
    assert torch.equal(anchor.reference, chunks[0][:, :, -1:])
    assert torch.equal(anchor.apply(chunks[3]), chunks[0])
    anchor.release()
    for k in range(1, SETTLE_CHUNKS + 1):  # the settling chunks pass unchanged; the last is the new reference
        assert anchor.apply(chunks[k + 3]) is chunks[k + 3]
        assert (anchor.reference is None) == (k < SETTLE_CHUNKS)
    assert torch.equal(anchor.apply(chunks[7]), chunks[3 + SETTLE_CHUNKS])


def _model_calls(pipe, monkeypatch) -> _Recorder:
    """The DiT's calls in this test (test_streaming's recorder; the shared model restored after)."""
    monkeypatch.setattr(pipe.model, "forward_chunk", pipe.model.forward_chunk)
    return _Recorder(pipe.model)


class _Calls:
    """Records every `anchor_latents` call a stream makes: (latents in, reference, latents out)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = anchor_mod.anchor_latents

        def record(latents, reference):
            out = real(latents, reference)
            self.calls.append((latents.clone(), reference.clone(), out.clone()))
            return out

        monkeypatch.setattr(anchor_mod, "anchor_latents", record)


def test_a_stream_with_the_anchor_commits_the_anchored_latents(pipe, monkeypatch):
    """On the tiny model: the first chunk is the stream's without the anchor, bit for bit (so is the
    second one's raw sample, which sees the same history); every later chunk is its raw sample
    anchored to the first chunk's last frame, and the clean pass writes the anchored latents into the
    cache, so later chunks continue them. Off (the default), nothing changes. A random model's
    frames share no background, so every cell is counted as one here."""
    monkeypatch.setattr(anchor_mod, "BACKGROUND_RMS", float("inf"))
    plain = [c.latents for c in Session(pipe, "p", _config()).stream(9)]
    calls_in = _model_calls(pipe, monkeypatch)
    calls = _Calls(monkeypatch)
    anchored = [c.latents for c in Session(pipe, "p", _config(drift_anchor=True)).stream(12)]
    assert torch.equal(anchored[0], plain[0])
    assert torch.equal(calls.calls[0][0], plain[1]) and not torch.equal(anchored[1], plain[1])
    assert len(calls.calls) == len(anchored) - 1
    for (raw, ref, out), kept in zip(calls.calls, anchored[1:]):
        assert torch.equal(ref, anchored[0][:, :, -1:]) and torch.equal(out, kept)
    committed = [c["x"] for c in calls_in.calls if c["commit"]]
    assert len(committed) == len(anchored)
    assert all(torch.equal(c, x) for c, x in zip(committed, anchored))  # the cache holds what was kept
    assert not torch.equal(calls.calls[1][0], plain[2])  # chunk 2 continued the anchored history


def test_a_prompt_switch_re_anchors_once_the_new_scene_has_settled(pipe, monkeypatch):
    """The switch lets go, the settling chunks pass as made, the last of them is the new reference;
    the re-cache at the switch replays the anchored latents the cache held."""
    monkeypatch.setattr(anchor_mod, "BACKGROUND_RMS", float("inf"))
    calls = _Calls(monkeypatch)
    calls_in = _model_calls(pipe, monkeypatch)
    session = Session(pipe, "p", _config(drift_anchor=True))
    first = session.step().latents
    second = session.step().latents
    session.set_prompt("another prompt")
    settling = [session.step().latents for _ in range(SETTLE_CHUNKS)]
    committed = [c["x"] for c in calls_in.calls if c["commit"]]
    assert torch.equal(committed[2], torch.cat([first, second], 2)[:, :, :3])  # the re-cache, chunk by chunk
    assert torch.equal(committed[3], second) and not torch.equal(second, calls.calls[0][0])
    assert len(calls.calls) == 1  # the chunk before the switch only: the settling chunks pass as made
    assert torch.equal(calls.calls[0][1], first[:, :, -1:])
    assert torch.equal(session._anchor.reference, settling[-1][:, :, -1:])
    after = session.step().latents
    assert torch.equal(calls.calls[1][1], settling[-1][:, :, -1:]) and torch.equal(calls.calls[1][2], after)


def test_with_a_hidden_chunk_or_start_latents_the_first_chunk_made_is_the_reference(pipe, monkeypatch):
    """Hidden chunks: the hidden one gives the reference (the sink), so the first chunk shown is
    anchored. Start latents: the first chunk made after them does; the start is committed as given.
    A switch before the first chunk changes nothing."""
    monkeypatch.setattr(anchor_mod, "BACKGROUND_RMS", float("inf"))
    calls = _Calls(monkeypatch)
    session = Session(pipe, "p", _config(drift_anchor=True, hidden_chunks=1))
    shown = session.step().latents
    assert len(calls.calls) == 1 and torch.equal(calls.calls[0][2], shown)
    assert torch.equal(session._anchor.reference, calls.calls[0][1])

    calls.calls.clear()
    start = torch.randn(1, pipe.model.config.out_channels, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    session = Session(pipe, "p", _config(drift_anchor=True), start_latents=start)
    session.set_prompt("another prompt")  # before any chunk: the anchor still takes the first one made
    assert torch.equal(session.step().latents, start)
    made = session.step().latents
    assert not calls.calls and torch.equal(session._anchor.reference, made[:, :, -1:])
    session.step()
    assert torch.equal(calls.calls[0][1], made[:, :, -1:])


def test_a_setting_that_is_not_true_or_false_is_refused(pipe):
    with pytest.raises(ValueError, match="drift_anchor must be true or false; got 'false'"):
        Session(pipe, "p", _config(drift_anchor="false"))


def test_stream_config_takes_the_models_drift_anchor(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "drift_anchor": True})
    assert pipe.stream_config().drift_anchor
    assert not pipe.stream_config(drift_anchor=False).drift_anchor
    monkeypatch.setattr(pipe, "stream_defaults", None)
    assert not pipe.stream_config().drift_anchor  # checkpoints without one: off
