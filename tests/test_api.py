"""The headless streaming API (ui/api.py) in-process: a WebSocket client gets frames, switches prompt
and stops; two clients are isolated; bad requests get a 4xx with one clear line; a token guards it.
The tiny random model at 64x64 keeps every test within seconds."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("gradio")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from streamer.ui.api import Api  # noqa: E402
from streamer.ui.app import App  # noqa: E402
from streamer.video import probe_mp4  # noqa: E402

SIZE = [64, 64]
TINY = {"preset": "tiny", "device": "cpu", "decoder": "tiny"}  # a random tiny DiT and decoder: ~0.3 s a chunk


@pytest.fixture(scope="module")
def api():
    app = App({"tiny": TINY}, size=(64, 64), max_live=2)
    api = Api(app)
    server = FastAPI()
    server.include_router(api.router())
    with TestClient(server) as client:
        yield client, api
    api.close()
    app.placer.close()


def _create(client, **kw):
    r = client.post("/api/sessions", json={"prompt": "a red circle", "size": SIZE, **kw})
    assert r.status_code == 201, r.text
    return r.json()


def _chunk(ws, fmt="jpeg"):
    """The next chunk's header and its frames."""
    while True:
        head = json.loads(ws.receive_text())
        if head["type"] == "chunk":
            break
        assert head["type"] == "queued", head
    frames = [ws.receive_bytes() for _ in range(head["frames"])]
    return head, frames


def test_websocket_frames_prompt_switch_stop_and_recording(api, tmp_path):
    client, _ = api
    s = _create(client, seed=3)
    assert len(s["id"]) >= 20 and (s["width"], s["height"]) == (64, 64)
    with client.websocket_connect(f"/api/sessions/{s['id']}/frames") as ws:
        head, frames = _chunk(ws)
        assert head["index"] == 0 and head["frames"] == len(frames) > 0 and head["generated_fps"] > 0
        assert all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG files
        r = client.post(f"/api/sessions/{s['id']}/control", json={"prompt": "a blue square on grass"})
        assert r.status_code == 200 and r.json()["ok"] and r.json()["notes"] == []
        seen = [_chunk(ws)[0] for _ in range(4)]
        assert seen[-1]["prompt"] == "a blue square on grass"  # applied within the chunks already buffered
        assert client.get(f"/api/sessions/{s['id']}").json()["frames"] > 0
        rec = client.get(f"/api/sessions/{s['id']}/recording.mp4")
        assert rec.status_code == 200 and rec.headers["content-type"] == "video/mp4" and b"ftyp" in rec.content[:64]
        # named by the frames it holds: the newest made frame waits in the muxer until the next
        held = int(re.search(r"streamer-(\d+)-frames\.mp4", rec.headers["content-disposition"]).group(1))
        (tmp_path / "rec.mp4").write_bytes(rec.content)
        assert held > 0 and probe_mp4(tmp_path / "rec.mp4")["frames"] == held
        assert client.post(f"/api/sessions/{s['id']}/control", json={"action": "stop"}).status_code == 200
        while (msg := json.loads(ws.receive_text()))["type"] != "end":
            for _ in range(msg.get("frames", 0)):
                ws.receive_bytes()
    assert client.get(f"/api/sessions/{s['id']}").status_code == 404  # stopped and freed


def test_raw_rgb_frames(api):
    client, _ = api
    s = _create(client)
    with client.websocket_connect(f"/api/sessions/{s['id']}/frames?format=rgb") as ws:
        head, frames = _chunk(ws, "rgb")
        assert head["format"] == "rgb" and all(len(f) == 64 * 64 * 3 for f in frames)
    client.delete(f"/api/sessions/{s['id']}")


def test_two_clients_are_isolated(api):
    client, _ = api
    a, b = _create(client, seed=1), _create(client, seed=2)
    with client.websocket_connect(f"/api/sessions/{a['id']}/frames?format=rgb") as wa, \
            client.websocket_connect(f"/api/sessions/{b['id']}/frames?format=rgb") as wb:
        fa, fb = _chunk(wa)[1], _chunk(wb)[1]
        assert fa[0] != fb[0]  # different seeds, different streams
        # a second reader of a's stream is refused: frames go to one client only
        with pytest.raises(Exception):
            with client.websocket_connect(f"/api/sessions/{a['id']}/frames") as w2:
                w2.receive_text()
        client.post(f"/api/sessions/{b['id']}/control", json={"prompt": "b's own prompt"})
        assert all(_chunk(wa)[0]["prompt"] == "a red circle" for _ in range(3))
    with pytest.raises(Exception):  # a made-up id reads nothing
        with client.websocket_connect("/api/sessions/not-a-session/frames") as w3:
            w3.receive_text()
    for s in (a, b):
        client.delete(f"/api/sessions/{s['id']}")


def test_past_the_live_limit_a_client_is_told_its_place(api):
    client, _ = api
    live = [_create(client) for _ in range(2)]  # max_live=2
    third = _create(client)
    assert third["position"] == 1
    with client.websocket_connect(f"/api/sessions/{third['id']}/frames") as ws:
        assert json.loads(ws.receive_text()) == {"type": "queued", "position": 1}
        client.delete(f"/api/sessions/{live[0]['id']}")  # a slot frees: the third streams
        head, _ = _chunk(ws)
        assert head["index"] == 0
    for s in live[1:] + [third]:
        client.delete(f"/api/sessions/{s['id']}")


@pytest.mark.parametrize("body, status, text", [
    ({"prompt": "  "}, 400, "prompt is empty"),
    ({"prompt": "a", "seed": 99999999999999999999}, 400, "seed must be a whole number from 0 to"),
    ({"prompt": "a", "seed": 1.5}, 400, "seed must be a whole number"),
    ({"prompt": "a", "steps": 0}, 400, "steps must be a whole number from 1 to 8; got 0"),
    ({"prompt": "a", "steps": 100}, 400, "steps must be a whole number from 1 to 8; got 100"),
    ({"prompt": "a", "guidance": -1}, 400, "guidance must be a number from 0 to 20; got -1"),
    ({"prompt": "a", "guidance": "lots"}, 400, "guidance must be a number from 0 to 20; got 'lots'"),
    ({"prompt": "a", "guidance": True}, 400, "guidance must be a number from 0 to 20"),
    ({"prompt": "a", "policy_args": {"window": "abc"}}, 400, "knob window must be a whole number"),
    ({"prompt": "a", "policy": "nope"}, 400, "unknown cache policy"),
    ({"prompt": "a", "drift_anchor": "yes"}, 400, "drift_anchor must be true or false"),
    ({"prompt": "a", "size": "100x"}, 400, "size must look like"),
    ({"prompt": "a", "size": [60, 64]}, 400, "not possible"),
    ({"prompt": "a", "size": [4096, 4096]}, 413, "lower the video size"),
    ({"prompt": "a", "policy_args": {"window": 100_000_000}}, 413, "GiB"),
    ({"prompt": "a", "model": "nope"}, 400, "unknown model"),
    ({"prompt": "a", "tracks": {"tracks": "x"}}, 400, "tracks"),
    ({"prompt": "a", "colour": "red"}, 400, "unknown field 'colour'"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_a_4xx_with_one_line(api, body, status, text):
    client, app_api = api
    before = len(app_api.streams)
    r = client.post("/api/sessions", json=body)
    assert r.status_code == status and text in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"] and "Traceback" not in r.json()["detail"]
    assert len(app_api.streams) == before


def test_bad_controls_and_unknown_sessions(api):
    client, _ = api
    assert client.get("/api/sessions/nope").status_code == 404
    assert client.post("/api/sessions", content=b"\xff{").status_code == 400
    s = _create(client)
    for body, text in [({"action": "explode"}, "action must be"), ({"prompt": ""}, "prompt is empty"),
                       ({"tracks": [[["a"]]]}, "tracks")]:
        r = client.post(f"/api/sessions/{s['id']}/control", json=body)
        assert r.status_code == 400 and text in r.json()["detail"], r.text
    assert client.get(f"/api/sessions/{s['id']}/recording.mp4").status_code == 409  # nothing made yet
    client.delete(f"/api/sessions/{s['id']}")


def test_a_token_guards_every_route():
    app = App({"tiny": TINY}, size=(64, 64))
    api = Api(app, token="s3cret")
    server = FastAPI()
    server.include_router(api.router())
    with TestClient(server) as client:
        assert client.post("/api/sessions", json={"prompt": "a"}).status_code == 401
        ok = client.post("/api/sessions", json={"prompt": "a", "size": SIZE},
                         headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 201
        sid = ok.json()["id"]
        with pytest.raises(Exception):
            with client.websocket_connect(f"/api/sessions/{sid}/frames") as ws:
                ws.receive_text()
        with client.websocket_connect(f"/api/sessions/{sid}/frames?token=s3cret") as ws:
            assert _chunk(ws)[0]["index"] == 0
    api.close()
    app.placer.close()


def test_sessions_spread_over_two_cpu_devices():
    app = App({"tiny": {"preset": "tiny", "decoder": "tiny"}}, size=(64, 64), devices=["cpu", "cpu"])
    api = Api(app)
    server = FastAPI()
    server.include_router(api.router())
    with TestClient(server) as client:
        ids = [client.post("/api/sessions", json={"prompt": "a"}).json()["id"] for _ in range(4)]
        scheds = [api.streams[i].sched for i in ids]
        assert scheds[0] is not scheds[1] and scheds[0] is scheds[2] and scheds[1] is scheds[3]
        assert {s.name for s in scheds} == {"cpu#0", "cpu#1"}
    api.close()
    app.placer.close()
    np.testing.assert_equal(len(ids), 4)


# ---- a start image (issue 16) -------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with a few bytes of pixel data: decoding it would fail,
    so a size refusal proves nothing was decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b""))


def test_a_start_image_is_the_first_frame_streamed(api):
    """`image` (base64 or a data: URL): chunk 0 is the picture alone, by the size rule, through the
    model's own encoder and decoder (as doing that by hand); then chunks of 12 frames. The alpha
    conversion and the resize are said in `notes`."""
    from streamer.images import encode_frames, fit_image
    from streamer.models.frames import video_to_uint8

    client, app_api = api
    rgba = np.random.default_rng(4).integers(0, 256, (48, 96, 4), dtype=np.uint8)  # 96x48: wider than 64x64
    s = _create(client, image="data:image/png;base64," + _b64(_png(rgba, "RGBA")), seed=5)
    notes = " | ".join(s["notes"])
    assert "alpha channel (RGBA): converted to RGB" in notes and "96x48: resized to cover 64x64" in notes, notes
    assert "/tmp" not in notes and "upload" not in notes
    st = app_api.streams[s["id"]]
    with client.websocket_connect(f"/api/sessions/{s['id']}/frames?format=rgb") as ws:
        head, frames = _chunk(ws)
        assert head["index"] == 0 and head["first_frame"] == 0 and head["frames"] == 1
        first = np.frombuffer(frames[0], np.uint8).reshape(64, 64, 3)
        head2, frames2 = _chunk(ws)
        assert head2["index"] == 1 and head2["first_frame"] == 1 and head2["frames"] == 12
    pipe = st.session.pipe
    from PIL import Image

    over_black = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    fitted = np.asarray(fit_image(Image.fromarray(over_black), 64, 64))
    z = encode_frames(pipe, fitted[None])
    expected = video_to_uint8(pipe.decoder.decode(z, pipe.decoder.new_state()))[0, 0]
    assert np.abs(first.astype(int) - expected.astype(int)).max() <= 1  # alpha composite may round apart by 1
    client.delete(f"/api/sessions/{s['id']}")

    # plain base64 of a grayscale PNG at the video's size: converted, said, and nothing resized
    gray = np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8)
    s = _create(client, image=_b64(_png(gray, "L")))
    assert s["notes"] == ["image: grayscale (L): converted to RGB"], s["notes"]
    with client.websocket_connect(f"/api/sessions/{s['id']}/frames?format=rgb") as ws:
        first = np.frombuffer(_chunk(ws)[1][0], np.uint8).reshape(64, 64, 3)
    z = encode_frames(pipe, np.repeat(gray[None, ..., None], 3, -1))
    np.testing.assert_array_equal(first, video_to_uint8(pipe.decoder.decode(z, pipe.decoder.new_state()))[0, 0])
    client.delete(f"/api/sessions/{s['id']}")


@pytest.mark.parametrize("image, text", [
    (_b64(_png(np.zeros((40, 40, 3), np.uint8))[:60]), "image: corrupt or truncated image"),
    ("", "image is an empty file (0 bytes)"),
    (_b64(_png_header_only(0, 0)), "image: the picture has zero size"),
    (_b64(_png_header_only(20000, 20000)), "image: the picture has 400000000 pixels; at most 16384 per side"),
    (_b64(_png_header_only(17000, 10)), "image: the picture is 17000x10 pixels; at most 16384 per side"),
    (_b64(b"GIF89a not really a picture at all"), "image: not a picture Pillow can read"),
    ("not base64 at all!", "image must be a base64 string"),
    ("data:image/png,abc", "a data: URL must be base64"),
    (12, "image must be a base64 string"),
], ids=["corrupt", "empty", "zero-size", "huge", "too-long", "not-a-picture", "not-base64", "data-url", "number"])
def test_bad_start_images_get_a_400_with_one_line(api, image, text):
    client, app_api = api
    before = len(app_api.streams)
    r = client.post("/api/sessions", json={"prompt": "a", "size": SIZE, "image": image})
    detail = r.json()["detail"]
    assert r.status_code == 400 and text in detail, r.text
    assert "\n" not in detail and "/tmp" not in detail and "upload" not in detail and "Traceback" not in detail
    assert len(app_api.streams) == before


def test_tracks_drawn_on_the_start_image_are_mapped_with_it():
    """Tracks whose frame is the picture's own size follow the size rule with it (the tiny model of
    these tests has no trajectory channels, so this is the mapping alone)."""
    from streamer.images import StartImage
    from streamer.trajectory import Trajectory
    from streamer.ui.api import _tracks_on_image

    picture = StartImage(np.zeros((64, 64, 3), np.uint8), source_size=(96, 48))  # fitted to 64x64 from 96x48
    on_picture = Trajectory(np.array([[[48.0, 24.0]], [[60.0, 0.0]]], np.float32), np.ones((2, 1), bool), 16.0, 96, 48)
    notes: list[str] = []
    mapped = _tracks_on_image(on_picture, picture, (64, 64), notes)
    # scale 64/48, then (128 - 64) / 2 = 32 px cut on the left
    np.testing.assert_allclose(mapped.tracks[:, 0], [[32.0, 32.0], [48.0, 0.0]], atol=1e-4)
    assert (mapped.width, mapped.height) == (64, 64) and "mapped with it" in notes[0]
    in_video = Trajectory(np.array([[[10.0, 20.0]]], np.float32), np.ones((1, 1), bool), 16.0, 64, 64)
    assert _tracks_on_image(in_video, picture, (64, 64), notes) is in_video and len(notes) == 1


def test_the_python_client_sends_a_start_image_as_base64(tmp_path, monkeypatch):
    import base64

    from streamer.client import Client
    from streamer.errors import StreamerError

    sent = {}
    monkeypatch.setattr(Client, "request", lambda self, method, path, body=None: (sent.update(body), b'{"id": "x"}')[1])
    (tmp_path / "start.png").write_bytes(png := _png(np.zeros((8, 8, 3), np.uint8)))
    Client().create("a", image=tmp_path / "start.png")
    assert base64.b64decode(sent["image"]) == png
    with pytest.raises(StreamerError, match="cannot read"):
        Client().create("a", image=tmp_path / "missing.png")


def test_guidance_field_reaches_the_stream(api):
    """`guidance` sets the stream's text CFG scale; left out, the model's own (1 for a model without one)."""
    client, app_api = api
    guided, plain = _create(client, guidance=2.5), _create(client)
    assert app_api.streams[guided["id"]].session.config.sampler.guidance == 2.5
    assert app_api.streams[plain["id"]].session.config.sampler.guidance == 1.0
    for s in (guided, plain):
        client.delete(f"/api/sessions/{s['id']}")


def test_steps_field_or_the_models_own(api, monkeypatch):
    """`steps` sets the stream's denoising steps; left out, the model's own (its metadata's "steps"),
    and Self-Forcing's 4 for a model that names none. The Python client sends none unless asked."""
    from streamer.client import Client

    client, app_api = api
    plain = _create(client)  # the tiny model names no steps
    assert app_api.streams[plain["id"]].session.config.sampler.steps == (1000, 750, 500, 250)
    for pipe in app_api.app.models._loaded.values():
        monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "steps": 6})
    own, two = _create(client), _create(client, steps=2)
    assert len(app_api.streams[own["id"]].session.config.sampler.steps) == 6
    assert app_api.streams[two["id"]].session.config.sampler.steps == (1000, 500)
    for s in (own, two, plain):
        client.delete(f"/api/sessions/{s['id']}")
    sent = []
    monkeypatch.setattr(Client, "request", lambda self, method, path, body=None: sent.append(body) or json.dumps(
        {"id": "x", "width": 64, "height": 64, "position": 0}))
    Client().create("a")
    Client().create("a", steps=3)
    assert "steps" not in sent[0] and sent[1]["steps"] == 3


def test_mid_stream_tracks_are_in_the_streams_frame_numbering():
    """Tracks sent while streaming count video frames from the stream's first frame: the reply
    says from which frame they apply (`applies_from_frame`, the next chunk's first frame), and
    tracks with no visible point from there on (drawn as if frame 0 were now) are a 400 with one
    line, not silently nothing."""
    app = App({"default": {"device": "cpu"}}, size=(64, 64))
    api = Api(app)
    server = FastAPI()
    server.include_router(api.router())
    with TestClient(server) as client:
        s = _create(client)
        url = f"/api/sessions/{s['id']}/control"
        assert client.post(url, json={}).json()["applies_from_frame"] == 0  # nothing made yet
        with client.websocket_connect(f"/api/sessions/{s['id']}/frames") as ws:
            seen = sum(len(_chunk(ws)[1]) for _ in range(2))
            # the server may be a chunk ahead of the reader: the next chunk starts at `seen` or later
            past = {"tracks": [[[20 + i, 30] for i in range(seen)]], "width": 64, "height": 64, "fps": 16}
            r = client.post(url, json={"tracks": past})
            assert r.status_code == 400 and "no point is visible from video frame" in r.json()["detail"], r.text
            assert "frame 0 is the stream's first frame" in r.json()["detail"]
            on = {"tracks": [[[20 + i / 8, 30] for i in range(seen + 200)]], "width": 64, "height": 64, "fps": 16}
            r = client.post(url, json={"tracks": on})
            assert r.status_code == 200 and seen <= r.json()["applies_from_frame"] < seen + 200, r.text
            _chunk(ws)
        client.delete(f"/api/sessions/{s['id']}")
    api.close()
    app.placer.close()


def test_policy_args_for_the_models_own_policy_keep_its_other_knobs(api, monkeypatch):
    """A knob sent for the model's own policy changes that knob; its other trained knobs stay (as
    `streamer generate --policy-arg` and `streamer eval`). For another policy, its paper defaults."""
    client, app_api = api
    client.delete(f"/api/sessions/{_create(client)['id']}")  # the model loads at the first stream
    for pipe in app_api.app.models._loaded.values():
        monkeypatch.setattr(pipe, "stream_defaults", {"policy": "deep-sink", "policy_args": {"window": 9, "sink": 3}})
    own, other = _create(client, policy_args={"window": 12}), _create(client, policy="frame-sink", policy_args={"sink": 2})
    assert app_api.streams[own["id"]].session.config.policy_args == {"window": 12, "sink": 3}
    assert app_api.streams[other["id"]].session.config.policy_args == {"sink": 2}
    for s in (own, other):
        client.delete(f"/api/sessions/{s['id']}")


def test_drift_anchor_field_or_the_models_own(api, monkeypatch):
    """`drift_anchor` turns the anchor on or off for the stream; left out, the model's own. The reply
    says which."""
    client, app_api = api
    plain = _create(client)  # the tiny model names none: off
    assert plain["drift_anchor"] is False and not app_api.streams[plain["id"]].session.config.drift_anchor
    for pipe in app_api.app.models._loaded.values():
        monkeypatch.setattr(pipe, "stream_defaults", {"policy": "window", "drift_anchor": True})
    own, off = _create(client), _create(client, drift_anchor=False)
    assert own["drift_anchor"] is True and app_api.streams[own["id"]].session.config.drift_anchor
    assert off["drift_anchor"] is False and not app_api.streams[off["id"]].session.config.drift_anchor
    for s in (plain, own, off):
        client.delete(f"/api/sessions/{s['id']}")


def test_a_prompt_longer_than_the_text_encoder_reads_is_noted(api):
    """The tiny model's stand-in encoder reads 16 tokens (15 words and the end token): the rest is
    named in `notes`, on opening and on a switch, never cut silently."""
    client, _ = api
    long = " ".join(f"w{i}" for i in range(20))
    s = _create(client, prompt=long)
    assert s["notes"] == ["the prompt is 21 tokens; the text encoder reads the first 16, so it ignores "
                          "'w15 w16 w17 w18 w19'"], s["notes"]
    r = client.post(f"/api/sessions/{s['id']}/control", json={"prompt": long + " w20"})
    assert r.status_code == 200 and r.json()["notes"][0].startswith("the prompt is 22 tokens"), r.json()
    assert _create(client)["notes"] == []
    client.delete(f"/api/sessions/{s['id']}")
