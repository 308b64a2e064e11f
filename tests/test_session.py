"""A Session owns its stream: interleaving, noise sources, latents, tracks, start latents, text padding,
the unbounded `global` policy."""

import numpy as np
import pytest
import torch

from streamer.pipeline import Pipeline
from streamer.sampler import RecordedNoise, RecordingNoise, SamplerConfig, SeededNoise, own_sampler
from streamer.session import Session, StreamConfig
from streamer.trajectory import Trajectory
from tests.test_streaming import _pipe, _Recorder, assert_stream_equals_block_causal

STEPS = SamplerConfig(steps=(1000, 500))  # two steps: every path (renoise included) at half the cost


@pytest.fixture(scope="module")
def pipe():
    """A random tiny DiT with the real streaming Wan VAE decoder (random tiny weights): real decoder state."""
    return Pipeline.load(preset="tiny", device="cpu", dtype=torch.float32)


def _config(**kw):
    return StreamConfig(**{"width": 32, "height": 32, "sampler": STEPS, **kw})


def _run(session: Session, n: int):
    chunks = [session.step() for _ in range(n)]
    return [c.frames for c in chunks], [c.latents for c in chunks]


def test_interleaved_sessions_equal_separate_runs(pipe):
    """Two streams on one pipeline, stepped in turn, give bit for bit what each gives alone: nothing
    about a stream (cache, noise, text, decoder state) lives in the shared pipeline."""
    cfg_a, cfg_b = _config(policy="window", policy_args={"window": 4}, seed=1), _config(policy="frame-sink", seed=2)
    alone_a = _run(Session(pipe, "a red fox", cfg_a), 3)
    alone_b = _run(Session(pipe, "a blue whale", cfg_b), 3)
    a, b = Session(pipe, "a red fox", cfg_a), Session(pipe, "a blue whale", cfg_b)
    inter_a, inter_b = ([], []), ([], [])
    for _ in range(3):
        for s, out in ((a, inter_a), (b, inter_b)):
            c = s.step()
            out[0].append(c.frames)
            out[1].append(c.latents)
    for alone, inter in ((alone_a, inter_a), (alone_b, inter_b)):
        assert all(np.array_equal(x, y) for x, y in zip(alone[0], inter[0]))
        assert all(torch.equal(x, y) for x, y in zip(alone[1], inter[1]))
    assert not np.array_equal(alone_a[0][1], alone_b[0][1])  # the two streams do differ


def test_chunk_latents_decode_to_the_chunk_frames(pipe):
    session = Session(pipe, "p", _config(seed=4))
    chunks = [session.step() for _ in range(3)]
    state = pipe.decoder.new_state()
    from streamer.models.frames import video_to_uint8

    for c in chunks:
        assert c.latents.shape == (1, 16, 3, 4, 4)
        np.testing.assert_array_equal(video_to_uint8(pipe.decoder.decode(c.latents, state))[0], c.frames)
    assert [len(c.frames) for c in chunks] == [pipe.decoder.frames.video_frames(3), 12, 12]


def test_recorded_noise_replays_a_run_exactly(pipe, tmp_path):
    recorder = RecordingNoise(SeededNoise(11))
    first = _run(Session(pipe, "p", _config(noise=recorder)), 2)
    assert len(recorder.draws) == 2 * len(STEPS.steps)  # per chunk: initial noise + one re-noise per later step
    recorder.save(tmp_path / "noise.safetensors")
    replay = _run(Session(pipe, "p", _config(noise=RecordedNoise.load(tmp_path / "noise.safetensors"))), 2)
    assert all(torch.equal(x, y) for x, y in zip(first[1], replay[1]))
    assert all(np.array_equal(x, y) for x, y in zip(first[0], replay[0]))
    seeded = _run(Session(pipe, "p", _config(seed=11)), 2)  # the default source is the same seeded stream
    assert all(torch.equal(x, y) for x, y in zip(first[1], seeded[1]))
    other = _run(Session(pipe, "p", _config(seed=12)), 1)
    assert not torch.equal(other[1][0], first[1][0])
    exhausted = Session(pipe, "p", _config(noise=RecordedNoise(recorder.draws[:1])))
    with pytest.raises(ValueError, match="exhausted"):
        exhausted.step()


def test_a_chunk_uses_one_reading_of_the_tracks(monkeypatch):
    """Tracks changed while a chunk is being made (a stroke landing mid-chunk in the browser) apply
    from the next chunk: every denoising step and the clean pass of a chunk see the same channels."""
    pipe = Pipeline.load(preset="world-128", device="cpu", dtype=torch.float32)
    n = 60
    t = np.arange(n, dtype=np.float32)
    left = Trajectory(np.stack([20 + t, 40 + 0 * t], 1)[:, None], np.ones((n, 1), bool), fps=16, width=128, height=128)
    right = Trajectory(np.stack([100 - t, 90 + 0 * t], 1)[:, None], np.ones((n, 1), bool), fps=16, width=128,
                       height=128)
    session = Session(pipe, "p", StreamConfig(width=128, height=128, sampler=STEPS), tracks=left)
    seen = []
    inner = pipe.model.forward_chunk

    def spy(x, t, text, view, tracks=None):
        seen.append((view.plan.frames[0], tracks.clone()))
        if len(seen) == 1:
            session.set_tracks(right)  # lands after the first step of chunk 0
        return inner(x, t, text, view, tracks)

    monkeypatch.setattr(pipe.model, "forward_chunk", spy)
    c0, c1 = session.step(), session.step()
    per_chunk = len(STEPS.steps) + 1
    assert len(seen) == 2 * per_chunk
    for start, group in ((0, seen[:per_chunk]), (3, seen[per_chunk:])):
        assert all(f == start and torch.equal(tr, group[0][1]) for f, tr in group)
    expect_left = pipe.track_condition(left, 128, 128)([0, 1, 2])
    expect_right = pipe.track_condition(right, 128, 128)([3, 4, 5])
    assert torch.equal(seen[0][1], expect_left) and torch.equal(seen[per_chunk][1], expect_right)
    assert torch.equal(c0.tracks, expect_left) and torch.equal(c1.tracks, expect_right)


def test_tracks_on_a_model_without_track_channels_are_refused(pipe):
    traj = Trajectory(np.zeros((5, 1, 2), np.float32), np.ones((5, 1), bool), fps=16, width=32, height=32)
    with pytest.raises(ValueError, match="no trajectory channels"):
        Session(pipe, "p", _config(), tracks=traj)


def test_start_latents_begin_the_stream(pipe):
    """An image start: the clean latent frame is written to the cache first and decoded as the first
    frame; chunks of 3 follow from latent frame 1 and attend to it (1 + 12k frames in all)."""
    start = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    session = Session(pipe, "p", _config(policy="window", policy_args={"window": 7}), start_latents=start)
    chunks = list(session.stream(1 + 3 * 2))
    assert [c.latent_frames for c in chunks] == [[0], [1, 2, 3], [4, 5, 6]]
    assert [len(c.frames) for c in chunks] == [1, 12, 12]
    assert torch.equal(chunks[0].latents, start)
    assert 0 in [session.cache.slot_frame[s] for s in chunks[1].plan.history_slots]
    state = pipe.decoder.new_state()
    from streamer.models.frames import video_to_uint8

    np.testing.assert_array_equal(video_to_uint8(pipe.decoder.decode(start, state))[0], chunks[0].frames)
    with pytest.raises(ValueError, match="start latents"):
        Session(pipe, "p", _config(), start_latents=torch.zeros(1, 16, 1, 8, 8))


@torch.no_grad()
def test_text_shorter_than_text_len_is_zero_padded_as_wan_does(tiny_model):
    """The model pads a short embedding with zero rows (attended, as in Wan): the same output as the
    embedding zero-padded by hand, and not the output of attending to the 5 tokens alone."""
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(1, 5, tiny_model.config.text_dim, generator=g)
    padded = torch.cat([emb, torch.zeros(1, tiny_model.config.text_len - 5, emb.shape[2])], dim=1)
    x, t = torch.randn(1, 16, 3, 4, 4, generator=g), torch.full((1, 3), 500.0)
    out_short = tiny_model(x, t, emb, chunk_frames=3)
    out_padded = tiny_model(x, t, padded, chunk_frames=3)
    torch.testing.assert_close(out_short, out_padded, atol=0, rtol=0)
    kv_short = tiny_model.encode_text(emb).kv[0][0]
    assert kv_short.shape[1] == tiny_model.config.text_len
    with pytest.raises(ValueError, match="text_len"):
        tiny_model.encode_text(torch.zeros(1, tiny_model.config.text_len + 1, emb.shape[2]))


@torch.no_grad()
def test_global_policy_equals_block_causal_full_sequence(tiny_model):
    """Self-Forcing's local_attn_size=-1: over 30 latent frames (the cache grows past its first 24
    slots), streaming equals one block-causal forward at every denoising step and the clean pass."""
    chunk, n_chunks = 3, 10
    rec = _Recorder(tiny_model)
    session = Session(_pipe(tiny_model), "a prompt", StreamConfig(width=32, height=32, chunk_frames=chunk,
                                                                   policy="global", sampler=STEPS, seed=9))
    list(session.stream(chunk * n_chunks))
    assert session.cache.num_slots == 48 and len(session.cache.frames()) == 30  # grew once, in a block
    assert_stream_equals_block_causal(tiny_model, rec, chunk, n_chunks, len(STEPS.steps))


def test_overlapped_decode_gives_the_same_chunks_in_order(pipe):
    """Decoding chunk k on a second thread while the DiT makes chunk k+1 changes no byte and no order."""
    plain = list(Session(pipe, "p", _config(seed=6)).stream(9))
    overlapped = list(Session(pipe, "p", _config(seed=6)).stream(9, overlap=True))
    assert [c.index for c in overlapped] == [0, 1, 2]
    assert [c.first_video_frame for c in overlapped] == [c.first_video_frame for c in plain] == [0, 9, 21]
    for a, b in zip(plain, overlapped):
        np.testing.assert_array_equal(a.frames, b.frames)
        assert torch.equal(a.latents, b.latents)


def test_guidance_zero_is_the_empty_prompt_and_one_is_off(pipe):
    """Text CFG v = v(null) + g (v(prompt) - v(null)): with another prompt's text as the null text,
    g = 0 samples the first chunk that prompt samples (no cached history yet, so only the text
    differs); g = 1, or a timestep interval no step falls in, is the unguided stream bit for bit;
    g = 3 changes it; the null text is the empty prompt's, the one training drops text to."""
    import dataclasses

    def session(prompt, **kw):
        return Session(pipe, prompt, _config(sampler=dataclasses.replace(STEPS, **kw), seed=5))

    first = lambda prompt, **kw: session(prompt, **kw).step().latents  # noqa: E731
    plain = first("a red fox")
    swapped = session("a red fox", guidance=0.0)
    swapped._null = session("a blue whale")._text
    assert torch.allclose(swapped.step().latents, first("a blue whale"), atol=1e-6)
    null = session("a red fox")._null_text()
    want = pipe.model.encode_text(pipe.text_encoder.encode([" "]))
    assert all(torch.equal(a, b) for ab, wb in zip(null.kv, want.kv) for a, b in zip(ab, wb))
    assert not torch.equal(null.kv[0][0], session("a red fox")._text.kv[0][0])
    assert torch.equal(first("a red fox", guidance=1.0), plain)
    assert torch.equal(first("a red fox", guidance=3.0, guidance_interval=(0.0, 400.0)), plain)
    assert (first("a red fox", guidance=3.0) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("kw", [{"guidance": -1.0}, {"guidance": float("nan")}, {"guidance_interval": (900.0, 100.0)}])
def test_bad_guidance_is_refused(kw):
    with pytest.raises(ValueError, match="guidance"):
        SamplerConfig(**kw)


def test_stream_config_takes_the_models_steps(pipe, monkeypatch):
    """A model's own denoising steps (its metadata's "steps": a count, evenly spaced, or the
    timesteps) are the default; an explicit count overrides; a model that names none gets
    Self-Forcing's 4."""
    monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "steps": 6})
    assert pipe.stream_config().sampler.steps == (1000, 833, 667, 500, 333, 167)
    assert pipe.stream_config(steps=2).sampler.steps == (1000, 500)
    monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "steps": [1000, 750, 500, 250, 100]})
    assert pipe.stream_config().sampler.steps == (1000, 750, 500, 250, 100)
    monkeypatch.setattr(pipe, "stream_defaults", None)
    assert pipe.stream_config().sampler.steps == (1000, 750, 500, 250)


@pytest.mark.parametrize("bad", [0, 1001, True, 2.5, "6", [], [500, 750], [1000, 0], [1000, 500.0], None])
def test_bad_model_steps_are_refused(bad):
    with pytest.raises(ValueError, match="sampler steps"):
        own_sampler(bad)


def test_a_world_model_with_bad_steps_does_not_load(tmp_path):
    """The metadata's steps and hidden chunks are checked as the model loads (one line naming the folder), not at the
    first chunk of a stream."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from streamer.models.loader import CheckpointError
    from streamer.pipeline import WEIGHTS_DIR

    for name in ("dit.safetensors", "vae.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    with safe_open(str(tmp_path / "dit.safetensors"), "pt") as f:
        meta = f.metadata()
    for key, value, ok in (("steps", 7, True), ("steps", [1000, 250, 500], False), ("hidden_chunks", -1, False),
                           ("hidden_chunks", "1", False), ("drift_anchor", "false", False)):
        stream = {**json.loads(meta["stream"]), key: value}
        save_file(load_file(str(tmp_path / "dit.safetensors")), str(tmp_path / "dit.safetensors"),
                  metadata={**meta, "stream": json.dumps(stream)})
        if ok:
            pipe = Pipeline.load_default(tmp_path, device=torch.device("cpu"), dtype=torch.float32)
            assert len(pipe.stream_config().sampler.steps) == 7
        else:
            with pytest.raises(CheckpointError, match=f"{tmp_path}.*{'sampler steps' if key == 'steps' else key}"):
                Pipeline.load_default(tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    save_file(load_file(str(tmp_path / "dit.safetensors")), str(tmp_path / "dit.safetensors"),
              metadata={**meta, "stream": "[]"})
    with pytest.raises(CheckpointError, match='"stream" metadata must be an object'):
        Pipeline.load_default(tmp_path, device=torch.device("cpu"), dtype=torch.float32)


def test_stream_config_takes_the_models_guidance(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "guidance": 2.5, "guidance_interval": [500, 1000]})
    sampler = pipe.stream_config().sampler
    assert (sampler.guidance, sampler.guidance_interval) == (2.5, (500.0, 1000.0))
    assert sampler.guided(1000.0) and not sampler.guided(250.0)
    assert pipe.stream_config(guidance=1.0).sampler.guidance == 1.0
    monkeypatch.setattr(pipe, "stream_defaults", None)
    assert pipe.stream_config().sampler.guidance == 1.0  # checkpoints without one: unguided


def test_hidden_chunks_are_made_and_kept_but_not_shown(pipe):
    """hidden_chunks=1: the stream is a stream without them less its first chunk, bit for bit. The
    hidden chunk is in the KV cache and the decoder's state; the first shown latent frame (which
    decodes to 4 frames there) keeps its last, so chunk sizes, frame numbers and latent frame
    indices are those of a stream that starts there."""
    plain = list(Session(pipe, "p", _config(policy="window", policy_args={"window": 9}, seed=8)).stream(12))
    session = Session(pipe, "p", _config(policy="window", policy_args={"window": 9}, seed=8, hidden_chunks=1))
    shown = list(session.stream(9))
    assert session.latent_frames_done == 9
    assert [c.index for c in shown] == [0, 1, 2]
    assert [c.latent_frames for c in shown] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [c.first_video_frame for c in shown] == [0, 9, 21]
    assert [len(c.frames) for c in shown] == [9, 12, 12]
    for got, want in zip(shown, plain[1:]):
        assert torch.equal(got.latents, want.latents)
    np.testing.assert_array_equal(shown[0].frames, plain[1].frames[3:])
    for got, want in zip(shown[1:], plain[2:]):
        np.testing.assert_array_equal(got.frames, want.frames)
    # overlapped decode: the same chunks
    over = list(Session(pipe, "p", _config(policy="window", policy_args={"window": 9}, seed=8, hidden_chunks=1))
                .stream(9, overlap=True))
    for a, b in zip(shown, over):
        np.testing.assert_array_equal(a.frames, b.frames)


def test_hidden_chunks_hold_the_tracks_at_their_first_point():
    """Tracks are indexed from the first shown frame: the hidden chunk reads the trajectory's first
    point in all its latent frames, the shown latent frame j what a stream without hidden chunks reads
    at j."""
    from streamer.models.wan import CausalWanModel, get_config
    from tests.test_streaming import _pipe

    torch.manual_seed(0)
    tpipe = _pipe(CausalWanModel(get_config("tiny", track_channels=8)).eval())
    xs = np.linspace(4, 28, 40, dtype=np.float32)
    traj = Trajectory(np.stack([xs, xs], 1)[:, None], np.ones((40, 1), bool), fps=16, width=32, height=32)
    seen = []
    inner = tpipe.model.forward_chunk
    tpipe.model.forward_chunk = lambda x, t, text, view, tracks=None: (
        seen.append((list(view.plan.frames), view.commit, tracks.clone())), inner(x, t, text, view, tracks))[1]
    cfg = StreamConfig(width=32, height=32, sampler=STEPS, policy="window", policy_args={"window": 9}, hidden_chunks=1)
    session = Session(tpipe, "p", cfg, tracks=traj)
    shown = [session.step() for _ in range(2)]
    cond = tpipe.track_condition(traj, 32, 32)
    hidden_calls = [tr for frames, _, tr in seen if frames == [0, 1, 2]]
    assert len(hidden_calls) == len(STEPS.steps) + 1  # every denoising step and the clean pass
    for tr in hidden_calls:
        torch.testing.assert_close(tr, cond([0, 0, 0]), atol=0, rtol=0)
    torch.testing.assert_close(shown[0].tracks, cond([0, 1, 2]), atol=0, rtol=0)
    torch.testing.assert_close(shown[1].tracks, cond([3, 4, 5]), atol=0, rtol=0)
    assert not torch.equal(cond([0, 0, 0]), cond([0, 1, 2]))  # the track moves: the test can tell


def test_hidden_chunks_do_not_hide_a_start_image(pipe):
    """Start latents are the stream's first frames: no chunk is hidden before them."""
    start = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = list(Session(pipe, "p", _config(seed=3), start_latents=start).stream(4))
    b = list(Session(pipe, "p", _config(seed=3, hidden_chunks=2), start_latents=start).stream(4))
    assert [c.latent_frames for c in b] == [[0], [1, 2, 3]]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frames, y.frames)


def test_stream_config_takes_the_models_hidden_chunks(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "hidden_chunks": 1})
    assert pipe.stream_config().hidden_chunks == 1
    assert pipe.stream_config(hidden_chunks=0).hidden_chunks == 0
    monkeypatch.setattr(pipe, "stream_defaults", None)
    assert pipe.stream_config().hidden_chunks == 0
    for bad in (-1, 9, 1.5, True, "2"):  # as the command line's range: a whole number in 0..8
        with pytest.raises(ValueError, match="hidden_chunks"):
            Session(pipe, "p", _config(hidden_chunks=bad))


def test_untracked_positions_follow_the_track_channels_chunk_by_chunk():
    """deep-sink 9/3 with untracked_positions=absolute: without tracks the stream is frame-sink 9/3's
    bit for bit, with a track in view all along it is deep-sink's; a stroke that begins mid-stream
    (invisible points: all-zero channels) switches the chunks' positions from absolute to slot at
    the first chunk whose channels it reaches."""
    from streamer.models.wan import CausalWanModel, get_config

    torch.manual_seed(0)
    tpipe = _pipe(CausalWanModel(get_config("tiny", track_channels=8)).eval())
    n = 100
    xs = np.linspace(4, 28, n, dtype=np.float32)
    points = np.stack([xs, xs], 1)[:, None]
    everywhere = Trajectory(points, np.ones((n, 1), bool), fps=16, width=32, height=32)
    later = Trajectory(points, (np.arange(n) >= 57)[:, None], fps=16, width=32, height=32)  # from latent frame 15

    def run(policy, args, tracks):
        cfg = StreamConfig(width=32, height=32, sampler=STEPS, policy=policy, policy_args=args, seed=4)
        return list(Session(tpipe, "p", cfg, tracks=tracks).stream(24))

    switching = {"window": 9, "sink": 3, "untracked_positions": "absolute"}
    for tracks, same in ((None, "frame-sink"), (everywhere, "deep-sink")):
        got, want = run("deep-sink", switching, tracks), run(same, {"window": 9, "sink": 3}, tracks)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.latents, b.latents) and a.plan.history_positions == b.plan.history_positions
    assert not torch.equal(run("frame-sink", {"window": 9, "sink": 3}, None)[-1].latents,
                           run("deep-sink", {"window": 9, "sink": 3}, None)[-1].latents)  # the test can tell
    chunks = run("deep-sink", switching, later)
    tracked = [bool((c.tracks != 0).any()) for c in chunks]
    assert tracked == [False] * 5 + [True] * 3
    # frames 12..14 without a track: absolute, as frame-sink (sinks 0..2, then 9..11); 15..17 tracked:
    # Deep Sink's slots (sinks 0..2 right before 12..14)
    assert chunks[4].plan.positions == [12.0, 13.0, 14.0] and chunks[5].plan.positions == [6.0, 7.0, 8.0]
    assert chunks[4].plan.history_positions == [0.0, 1.0, 2.0, 9.0, 10.0, 11.0]
    assert chunks[5].plan.history_positions == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("hidden, at_call", [(0, 0), (0, 7), (1, 0), (1, 9)])
def test_a_control_set_while_a_chunk_is_made_says_exactly_where_it_applies(pipe, monkeypatch, hidden, at_call):
    """A prompt set from another thread while a chunk is being made reaches the chunk after it; the
    returned (chunk index, video frame) is where the new prompt's first chunk is, idle or not, with
    hidden chunks (set during the hidden one: chunk 0, frame 0) and without."""
    session = Session(pipe, "old", _config(policy="window", policy_args={"window": 9}, hidden_chunks=hidden))
    forward, calls, said = pipe.model.forward_chunk, [0], []

    def mid_chunk(*args, **kw):  # the DiT's `at_call`-th call: a chunk is in the making
        if calls[0] == at_call:
            said.append(session.set_prompt("new"))
        calls[0] += 1
        return forward(*args, **kw)

    monkeypatch.setattr(pipe.model, "forward_chunk", mid_chunk)
    chunks = [session.step() for _ in range(4)]
    first_new = next(c for c in chunks if c.prompt == "new")
    assert said == [(first_new.index, first_new.first_video_frame)]
    assert all(c.prompt == "old" for c in chunks if c.index < first_new.index)
    idle = session.set_prompt("again")  # between chunks: the next one
    after = session.step()
    assert idle == (after.index, after.first_video_frame) and after.prompt == "again"
