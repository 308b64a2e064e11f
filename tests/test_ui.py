"""The UI's Python half without a browser: strokes -> tracks, per-page state, bad input messages."""

from __future__ import annotations

import html
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("gradio")

from streamer.trajectory import MAX_TRACKS  # noqa: E402
from streamer.ui.app import App, Live, video_frame_of_latent  # noqa: E402
from streamer.ui.strokes import (  # noqa: E402
    MAX_POINTS, Stroke, parse_strokes, stroke_track, strokes_to_trajectory, trajectory_to_strokes,
)

CANVAS = (200.0, 100.0)
FRAME = (64, 32)  # canvas px -> frame px: x0.32 both ways


def _stroke(points, **kw) -> Stroke:
    return parse_strokes([{"points": points, **kw}], CANVAS)[0]


def test_drawing_speed_is_motion_speed():
    # 100 canvas px to the right in one second, at a steady speed
    s = _stroke([[10, 50, 0], [60, 50, 500], [110, 50, 1000]])
    s.start = 0
    traj = strokes_to_trajectory([s], CANVAS, FRAME, fps=16, num_frames=24)
    assert traj.tracks.shape == (24, 1, 2) and (traj.width, traj.height, traj.fps) == (64, 32, 16)
    x = traj.tracks[:, 0, 0]
    assert x[0] == pytest.approx(10 * 0.32)
    assert x[8] == pytest.approx(60 * 0.32)      # frame 8 = 0.5 s into the stroke
    assert x[4] == pytest.approx(35 * 0.32)      # 0.25 s: halfway between the first two points
    assert x[16] == pytest.approx(110 * 0.32)    # 1 s: where the pen lifted...
    assert (x[16:] == x[16]).all()               # ...and it stays there
    assert traj.tracks[:, 0, 1] == pytest.approx(np.full(24, 16.0))
    assert traj.visible.all()
    assert s.end_frame(16) == 16


def test_start_frame_and_anchor():
    late = _stroke([[0, 0, 0], [100, 0, 250]], start=10)
    anchor = _stroke([[50, 50, 0], [51, 50, 400]])  # never leaves 2 px: a static point
    assert anchor.static and not late.static
    anchor.start = 3
    traj = strokes_to_trajectory([late, anchor], CANVAS, FRAME, fps=16, num_frames=20)
    vis = traj.visible
    assert not vis[:10, 0].any() and vis[10:, 0].all()
    assert traj.tracks[10, 0, 0] == 0 and traj.tracks[14, 0, 0] == pytest.approx(100 * 0.32)
    assert not vis[:3, 1].any() and vis[3:, 1].all()
    assert (traj.tracks[3:, 1] == traj.tracks[3, 1]).all()


def test_timing_is_relative_to_the_stroke_and_uneven_sampling_is_interpolated():
    s = _stroke([[0, 0, 5000], [40, 0, 5100], [40, 80, 5600]])  # absolute page times
    assert s.points[0, 2] == 0
    xy, vis = stroke_track(s, fps=10, num_frames=8)  # frame k = k * 100 ms
    assert xy[1].tolist() == [40, 0] and xy[6].tolist() == [40, 80]
    assert xy[2] == pytest.approx([40, 16])


def test_imported_trajectory_round_trips_through_the_canvas():
    t = np.arange(30, dtype=np.float32)
    tracks = np.stack([np.stack([10 + t, 2 + 0.5 * t], 1), np.stack([40 + 0 * t, 5 + 0 * t], 1)], 1)
    visible = np.ones((30, 2), bool)
    visible[:6, 0] = False  # the first track appears at frame 6
    from streamer.trajectory import Trajectory

    traj = Trajectory(tracks, visible, 16.0, 64, 32)
    strokes = parse_strokes(trajectory_to_strokes(traj, CANVAS), CANVAS)
    assert [s.start for s in strokes] == [6, 0] and strokes[1].static
    back = strokes_to_trajectory(strokes, CANVAS, FRAME, 16.0, 30)
    np.testing.assert_array_equal(back.visible, visible)
    np.testing.assert_allclose(back.tracks[visible], tracks[visible], atol=0.01)


@pytest.mark.parametrize("payload, text", [
    ("nope", "must be a list"),
    ([{"points": [[1, 1, 0]]}] * (MAX_TRACKS + 1), "too many tracks"),
    ([{"points": []}], "has no points"),
    ([{"points": [[1, 1, i] for i in range(MAX_POINTS + 1)]}], "points (at most"),
    ([{"points": [["a", 1, 0]]}], "must be [x, y, t] numbers"),
    ([{"points": [[float("nan"), 1, 0]]}], "NaN"),
    ([{"points": [[1, 1, 0], [250, 1, 10]]}], "(250, 1) is outside the 200x100 frame"),
    ([{"points": [[1, 1, 100], [2, 2, 50]]}], "backwards"),
    ([{"points": [[1, 1, 0], [2, 2, 1e9]]}], "lasts"),
    ([{"points": [[1, 1, 0]], "start": -3}], "start frame"),
    ([7], "expected"),
])
def test_bad_strokes_get_a_message(payload, text):
    with pytest.raises(ValueError) as e:
        parse_strokes(payload, CANVAS)
    assert text in str(e.value)


def test_strokes_first_seen_mid_stream_start_at_the_next_chunk():
    live = Live("k", (64, 64), 16.0)
    roles = live.set_strokes(parse_strokes([{"id": "a", "points": [[1, 1, 0], [9, 9, 100]]}], CANVAS), CANVAS)
    assert roles == {"a": "pre-drawn"} and live.strokes[0].start == 0
    live.streaming, live.begun_latents = True, 6  # chunks of latent frames 0-2 and 3-5 are under way
    payload = [{"id": "a", "points": [[1, 1, 0], [9, 9, 100]]}, {"id": "b", "points": [[5, 5, 0], [50, 5, 80]]},
               {"id": "c", "points": [[7, 7, 0]]}]
    roles = live.set_strokes(parse_strokes(payload, CANVAS), CANVAS)
    assert roles == {"a": "pre-drawn", "b": "live", "c": "static"}
    assert [s.start for s in live.strokes] == [0, video_frame_of_latent(6), 21]
    live.begun_latents = 9  # the same stroke sent again while it is drawn keeps its start
    live.set_strokes(parse_strokes(payload, CANVAS), CANVAS)
    assert live.strokes[1].start == 21
    live.close()


def test_painted_tracks_reach_the_model_channels():
    from streamer.pipeline import Pipeline

    live = Live("k", (64, 64), 16.0)
    live.pipe = Pipeline.load(preset="world-128", device="cpu")
    assert live.tracks_for([0, 1, 2]) is None  # no tracks: no drag
    live.set_strokes(parse_strokes([{"points": [[10, 10, 0], [190, 90, 1000]]}], CANVAS), CANVAS)
    traj = live.tracks_for([3, 4, 5])
    assert traj.num_frames >= live.pipe.decoder.frames.video_frames(6)
    c = live.pipe.track_condition(traj, 64, 64)([3, 4, 5])
    assert c.shape == (1, 64, 3, 8, 8) and c.abs().sum() > 0
    live.close()


def _request(h="h"):
    return SimpleNamespace(session_hash=h)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    bad = tmp_path_factory.mktemp("ckpt") / "broken.pt"
    bad.write_bytes(b"\x00" * 10)
    app = App({"tiny": {"preset": "tiny", "device": "cpu"}, "broken": {"checkpoint": str(bad), "device": "cpu"}},
              size=(64, 64))
    yield app
    app.placer.close()


def _messages(gen) -> str:
    return " | ".join(out[3] for out in gen if isinstance(out[3], str))


@pytest.mark.parametrize("prompt, model, knobs, text", [
    ("  ", "tiny", "window=21", "prompt is empty"),
    ("a cat", "tiny", "window=2", "cannot hold one chunk"),
    ("a cat", "tiny", "banana=3", "has no knob"),
    ("a cat", "broken", "window=21", "failed to load"),
])
def test_bad_controls_give_a_message(app, prompt, model, knobs, text):
    msgs = _messages(app.start("page", prompt, 0, model, "window", knobs, 4, False, _request()))
    assert "sc-error" in msgs and text in msgs
    assert app.lives["page"].session is None  # nothing half-started


def test_pages_interleaved_stream_exactly_as_alone(app):
    """Two pages taking turns on one model (and its streaming decoder) get what each gets alone."""
    def chunks(key, n):
        live = app.lives[key]
        return [app.placer.schedulers[0].call(app._step, live, live.session).frames for _ in range(n)]

    def open_(key, seed):
        app.live(key)
        cfg = dict(chunk_frames=3, policy="window", policy_args={}, seed=seed)
        app.placer.schedulers[0].call(app._open, app.lives[key], "tiny", "a cat", cfg)

    open_("alone", 1)
    alone = chunks("alone", 2)
    open_("a", 1)
    open_("b", 2)
    mixed = [chunks("a", 1)[0], chunks("b", 1)[0], chunks("a", 1)[0]]
    assert all(np.array_equal(x, y) for x, y in zip(alone, [mixed[0], mixed[2]]))
    assert not np.array_equal(mixed[0], mixed[1])
    for key in ("alone", "a", "b"):
        app.lives.pop(key).close()


@pytest.mark.parametrize("fmt", ["project (.npz)", "project (.json)", "Wan-Move (.npy)", "ATI (.json)"])
def test_export_then_import(app, fmt):
    live = app.live("io")
    live.set_strokes(parse_strokes([{"points": [[10, 10, 0], [100, 50, 500]]}, {"points": [[30, 30, 0]]}],
                                   live.canvas), live.canvas)
    files, msg = app.export("io", fmt)
    assert "exported 2 tracks" in msg
    strokes, msg = app.import_tracks("io", files)
    assert "imported 2 tracks" in msg, msg
    back = parse_strokes(strokes, live.canvas)
    assert back[0].points[-1, :2] == pytest.approx([100, 50], abs=0.05) and back[1].static
    app.lives.pop("io").close()


def test_malformed_upload_gives_a_message(app, tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"tracks": [[[1, 2]], [[1]]]}')
    strokes, msg = app.import_tracks("up", [str(bad)])
    assert strokes is None and "import failed" in msg and "sc-error" in msg
    huge = tmp_path / "huge.json"
    huge.write_text('{"tracks": [[[1, 2]]], "visible": [[true]], "fps": 16, "width": 0, "height": 64}')
    assert "import failed" in app.import_tracks("up", [str(huge)])[1]
    app.lives.pop("up").close()


def test_closing_the_tab_frees_the_page(app):
    live = app.live("gone", _request("hash-1"))
    app.placer.schedulers[0].call(app._open, live, "tiny", "a cat", dict(chunk_frames=3, policy="window",
                                                                          policy_args={}, seed=0))
    workdir = live.workdir
    app.unload(_request("hash-1"))
    assert "gone" not in app.lives and live.session is None and live.writer is None and not workdir.exists()



@pytest.mark.parametrize("seed, steps, knobs, text", [
    (99999999999999999999, 4, "window=21", "seed must be a whole number from 0 to 9223372036854775807"),
    (1.5, 4, "window=21", "seed must be a whole number"),
    (0, 0, "window=21", "steps must be a whole number from 1 to 8; got 0"),
    (0, 100, "window=21", "steps must be a whole number from 1 to 8; got 100"),
    (0, 2.5, "window=21", "steps must be a whole number"),
    (0, 4, "window=abc", "knob window must be a whole number"),
])
def test_integer_fields_are_checked_not_clamped(app, seed, steps, knobs, text):
    msgs = _messages(app.start("page2", "a cat", seed, "tiny", "window", knobs, steps, False, _request()))
    assert "sc-error" in msgs and text in msgs, msgs
    assert app.lives["page2"].session is None


def test_a_stream_too_big_for_memory_is_refused_at_once(app):
    import time as _time

    t0 = _time.perf_counter()
    msgs = _messages(app.start("page3", "a cat", 0, "tiny", "window", "window=100000000", 4, False, _request()))
    assert "sc-error" in msgs and "GiB" in msgs and "lower" in msgs, msgs
    assert _time.perf_counter() - t0 < 5 and app.lives["page3"].session is None


@pytest.mark.parametrize("name, data, text", [
    ("r.npz", bytes(range(256)) * 3, "r.npz: not a trajectory .npz file"),
    ("g.json", b"\xff\xfe garbage {", "g.json: not a JSON text file"),
])
def test_upload_errors_name_the_file_not_the_server_path(app, tmp_path, name, data, text):
    bad = tmp_path / name
    bad.write_bytes(data)
    strokes, msg = app.import_tracks("up2", [str(bad)])
    assert strokes is None and text in msg, msg
    for leak in (str(tmp_path), "/tmp", "pickle", "codec", "utf-8"):
        assert leak not in msg
    app.lives.pop("up2").close()


def test_the_anchor_checkbox_reaches_the_stream(app):
    """The Settings checkbox turns the drift anchor on or off; left out (an older page), the model's own."""
    for key, anchor, want in (("an1", True, True), ("an2", False, False), ("an3", None, False)):
        gen = app.start(key, "a cat", 0, "tiny", "window", "window=21", 4, False, _request(), anchor)
        next(out for out in gen if isinstance(out[0], np.ndarray))
        assert app.lives[key].session.config.drift_anchor is want
        gen.close()
        app.stop(key)
        app.lives.pop(key).close()


def test_pause_resume_shows_every_frame_in_order(app):
    """Frames made before a Pause are shown after Resume, none skipped (the buffer stays with the page)."""
    gen = app.start("pr", "a cat", 0, "tiny", "window", "window=21", 4, False, _request())
    frames: list = []
    for out in gen:
        if isinstance(out[0], np.ndarray):
            frames.append(out[0])
            if len(frames) == 10:
                break
    live = app.lives["pr"]
    app.pause("pr")
    gen.close()
    assert live.buffer, "the tiny model runs ahead of 16 fps: frames wait in the buffer"
    waiting = live.buffer[0][0]
    resumed = next(out[0] for out in app.resume("pr", _request()) if isinstance(out[0], np.ndarray))
    assert np.array_equal(resumed, waiting) and live.shown == 11
    app.stop("pr")
    app.lives.pop("pr").close()


def test_cache_panel_numbers_latent_frames_from_the_first_shown_chunk():
    """With a hidden chunk in the cache (as the sink), the cache panel's header and chunk column give
    the chunk's latent frames as the stream numbers them (0..2 for the first shown chunk), not the
    cache's own indices (3..5)."""
    import torch

    from streamer.pipeline import Pipeline
    from streamer.session import Session, StreamConfig
    from streamer.ui.app import cache_html

    pipe = Pipeline.load(preset="tiny", device="cpu", dtype=torch.float32)
    cfg = StreamConfig(width=32, height=32, policy="deep-sink", policy_args={"window": 9, "sink": 3}, hidden_chunks=1)
    chunk = Session(pipe, "p", cfg).step()
    assert list(chunk.plan.frames) == [3, 4, 5] and chunk.latent_frames == [0, 1, 2]
    html = cache_html(chunk)
    assert "chunk 0 (latent frames 0..2, slot positions)" in html and ">0,1,2</td>" in html
    # a chunk without tracks under untracked_positions=absolute says so (the tiny model has no tracks)
    cfg.policy_args = {"window": 9, "sink": 3, "untracked_positions": "absolute"}
    assert "(latent frames 0..2, absolute positions)" in cache_html(Session(pipe, "p", cfg).step())


def test_a_prompt_longer_than_the_text_encoder_reads_is_said_on_the_page(app):
    """The tiny model's encoder reads 16 tokens: Start and a prompt switch name what is cut."""
    long = " ".join(f"w{i}" for i in range(20))
    gen = app.start("long", long, 0, "tiny", "window", "window=21", 4, False, _request())
    said = []
    for out in gen:
        if isinstance(out[3], str):
            said.append(html.unescape(out[3]))  # the page's messages are escaped HTML
        if isinstance(out[0], np.ndarray):
            break
    gen.close()
    assert any("the prompt is 21 tokens; the text encoder reads the first 16, so it ignores 'w15 w16 w17 w18 "
               "w19'" in m for m in said), said
    switched = app.set_prompt("long", long + " w20")
    assert "prompt switched" in switched and "22 tokens" in switched
    assert "tokens" not in app.set_prompt("long", "a cat")
    app.stop("long")
    app.lives.pop("long").close()


def test_the_recording_downloaded_mid_stream_is_named_by_the_frames_it_holds(app):
    """Download while streaming: every frame made but the newest (it waits in the muxer); after
    Stop: every frame made. The name counts what the file holds, not what was shown."""
    import re

    from streamer.video import probe_mp4

    gen = app.start("rec", "a cat", 0, "tiny", "window", "window=21", 4, False, _request())
    shown = 0
    for out in gen:
        shown += isinstance(out[0], np.ndarray)
        if shown == 6:
            break
    live = app.lives["rec"]
    for when in ("streaming", "stopped"):
        file, _ = app.download("rec")
        path = file.value["path"] if isinstance(file.value, dict) else file.value
        held = int(re.search(r"streamer-(\d+)-frames\.mp4", str(path)).group(1))
        assert probe_mp4(path)["frames"] == held > 0, when
        if when == "streaming":  # the stream runs a chunk ahead: the writer may have gone on since
            assert shown - 1 <= held <= live.writer.frames_written - 1
            gen.close()
            app.stop("rec")
        else:
            assert held == live.recorded >= shown
    app.lives.pop("rec").close()
