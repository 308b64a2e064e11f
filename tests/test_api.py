"""The headless streaming API (ui/api.py) in-process: a WebSocket client gets frames, switches prompt
and stops; two clients are isolated; bad requests get a 4xx with one clear line; a token guards it.
The tiny random model at 64x64 keeps every test within seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gradio")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from streamer.ui.api import Api  # noqa: E402
from streamer.ui.app import App  # noqa: E402

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


def test_websocket_frames_prompt_switch_stop_and_recording(api):
    client, _ = api
    s = _create(client, seed=3)
    assert len(s["id"]) >= 20 and (s["width"], s["height"]) == (64, 64)
    with client.websocket_connect(f"/api/sessions/{s['id']}/frames") as ws:
        head, frames = _chunk(ws)
        assert head["index"] == 0 and head["frames"] == len(frames) > 0 and head["generated_fps"] > 0
        assert all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG files
        r = client.post(f"/api/sessions/{s['id']}/control", json={"prompt": "a blue square on grass"})
        assert r.status_code == 200 and r.json()["ok"]
        seen = [_chunk(ws)[0] for _ in range(4)]
        assert seen[-1]["prompt"] == "a blue square on grass"  # applied within the chunks already buffered
        assert client.get(f"/api/sessions/{s['id']}").json()["frames"] > 0
        rec = client.get(f"/api/sessions/{s['id']}/recording.mp4")
        assert rec.status_code == 200 and rec.headers["content-type"] == "video/mp4" and b"ftyp" in rec.content[:64]
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
    ({"prompt": "a", "policy_args": {"window": "abc"}}, 400, "knob window must be a whole number"),
    ({"prompt": "a", "policy": "nope"}, 400, "unknown cache policy"),
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
