"""`streamer serve` in a real headless Chromium: paint, stream, steer, stop, download; two pages apart;
a start image whose object is dragged along a stroke.

Needs Debian `chromium` and the `playwright` package (its own browser download is not used).
Runs the shipped world-128 model at 128x128 (trajectory channels, so painted tracks steer it), or
a random model of that architecture at 64x64 when the weights are absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("browser tests need Debian chromium (apt-get install -y chromium)", allow_module_level=True)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    pytest.skip("browser tests need playwright (pip install playwright)", allow_module_level=True)

os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "1")  # notice closed tabs within a second
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from streamer.pipeline import WEIGHTS_DIR  # noqa: E402
from streamer.ui.app import build_app  # noqa: E402
from streamer.video import probe_mp4  # noqa: E402

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
expect.set_options(timeout=20_000)  # the CPU may be shared with other work: be patient, not flaky


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The shipped model at its native size when its weights are there (what users see, as in the
# README screenshot); else a random model of the same architecture, smaller and faster.
if (WEIGHTS_DIR / "dit.safetensors").is_file():
    MODEL, SIZE = ("default", {"device": "cpu"}), (128, 128)
else:
    MODEL, SIZE = ("world-128 (random)", {"preset": "world-128", "device": "cpu"}), (64, 64)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bad = tmp_path_factory.mktemp("ckpt") / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    models = {MODEL[0]: MODEL[1], "broken checkpoint": {"checkpoint": str(bad), "device": "cpu"}}
    demo = build_app(models, size=SIZE)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield url, demo.streamer
    demo.close()
    demo.streamer.placer.close()  # the compute threads end before the interpreter does


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def open_page(server, browser):
    """Opens pages on the app; closes whatever a test left open, so a failed test's stream (its tab
    closed) frees the compute slot for the next test."""
    contexts = []

    def open_():
        ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1100})
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto(server[0])
        expect(page.locator(".sc-msg")).to_contain_text("drag to paint", timeout=30_000)
        return page

    yield open_
    for ctx in contexts:
        ctx.close()


def _fill_settled(box, text: str, tries: int = 5) -> None:
    """Type `text` into a field of an accordion just opened, as a person would once it is drawn:
    for about 0.1 s after opening, Gradio's mount can put the field's initial value back over what
    was typed (seen in 3 of 15 tries when typing at once). Retypes until the text holds for 0.5 s;
    Tab so that the change reaches the server before a button reads it."""
    for _ in range(tries):
        box.fill(text)
        box.press("Tab")
        time.sleep(0.5)
        if box.input_value() == text:
            return


def _frames(page) -> int:
    return int(page.locator("#sc-stats").get_attribute("data-frames") or 0)


def _wait_frames(page, n: int, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (f := _frames(page)) >= n:
            return f
        time.sleep(0.1)
    raise AssertionError(f"{n} frames expected, {_frames(page)} seen; message: {page.inner_text('#sc-message')}")


def _fps(page) -> float:
    return float(re.search(r"shown ([\d.]+) fps", page.inner_text("#sc-stats")).group(1))


def _draw(page, points, pause=0.02):
    box = page.locator(".sc-wrap canvas").bounding_box()
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        time.sleep(pause)
    page.mouse.up()


def test_paint_stream_steer_stop_download(server, open_page, tmp_path):
    app = server[1]
    page = open_page()
    _draw(page, [(0.2 + 0.05 * i, 0.5) for i in range(12)])  # a left-to-right stroke
    expect(page.locator(".sc-msg")).to_contain_text("1 track(s)")
    live = next(iter(app.lives.values()))
    assert len(live.strokes) == 1 and live.strokes[0].points[-1, 0] > live.strokes[0].points[0, 0]

    page.click("#sc-start")
    first = _wait_frames(page, 12)
    stats1 = page.inner_text("#sc-stats")
    later = _wait_frames(page, first + 24)
    # live counters: the text updates as chunks arrive; shown fps is paced to the video's 16 fps
    # (it may read exactly 16.0 twice), generated FPS is measured per chunk
    assert later > first and page.inner_text("#sc-stats") != stats1, "the FPS counter should move"
    assert _fps(page) > 0 and float(page.get_attribute("#sc-stats", "data-fps")) > 0
    expect(page.locator("#sc-cache")).to_contain_text("layer 0")

    page.click("#sc-pause")
    expect(page.locator("#sc-message")).to_contain_text("paused at frame")
    time.sleep(0.5)
    paused = _frames(page)
    time.sleep(1.0)
    assert _frames(page) == paused
    page.click("#sc-resume")
    later = _wait_frames(page, paused + 12)

    page.fill("#sc-prompt textarea", "a blue square on grass")
    page.click("#sc-apply")
    expect(page.locator("#sc-message")).to_contain_text("prompt switched")
    switched = _wait_frames(page, later + 24)  # the stream keeps going after the re-cache
    assert live.session.prompt == "a blue square on grass"
    _draw(page, [(0.7, 0.3), (0.7, 0.4), (0.7, 0.5)])  # a live track mid-stream
    expect(page.locator(".sc-msg")).to_contain_text("2 track(s) from the next chunk")
    assert live.strokes[1].start > 0
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # the README's: docs/screenshot.py

    page.click("#sc-stop")
    expect(page.locator("#sc-message")).to_contain_text("stopped after")
    page.click("#sc-download")
    link = page.locator("#sc-recording a").first
    expect(link).to_be_visible()
    with page.expect_download() as dl:
        link.click()
    path = tmp_path / "rec.mp4"
    dl.value.save_as(path)
    info = probe_mp4(path)
    assert info["codec"] == "h264" and (info["width"], info["height"]) == SIZE
    assert info["frames"] >= switched - 12  # what was shown (the last chunk may still be on its way)


def test_import_tracks_file(open_page, tmp_path):
    page = open_page()
    ati = tmp_path / "tracks.json"  # ATI-style: a list of tracks, one point per frame
    ati.write_text(json.dumps({"width": 64, "height": 64, "tracks": [
        [[8 + f, 32] for f in range(20)], [[40, 40]] * 20]}))
    page.locator("#sc-files button").first.click()
    page.locator("#sc-import input[type=file]").set_input_files(str(ati))
    expect(page.locator("#sc-message")).to_contain_text("imported 2 tracks")
    expect(page.locator(".sc-msg")).to_contain_text("2 track(s)")
    assert page.evaluate("window.streamerCanvas.strokes().length") == 2


def test_bad_input_shows_a_message_and_the_app_keeps_working(open_page):
    page = open_page()
    page.fill("#sc-prompt textarea", "   ")
    page.click("#sc-start")
    expect(page.locator("#sc-message")).to_contain_text("prompt is empty")

    too_many = [{"id": f"t{i}", "points": [[5, 5, 0], [50, 50, 100]]} for i in range(40)]
    page.evaluate("(s) => window.streamerCanvas.load(s)", too_many)
    expect(page.locator(".sc-msg")).to_contain_text("too many tracks")
    page.evaluate("(s) => window.streamerCanvas.load(s)", [{"id": "far", "points": [[5, 5, 0], [9000, 5, 50]]}])
    expect(page.locator(".sc-msg")).to_contain_text("outside")
    page.evaluate("(s) => window.streamerCanvas.load(s)", [{"id": "nan", "points": [["x", 5, 0]]}])
    expect(page.locator(".sc-msg")).to_contain_text("numbers")

    page.fill("#sc-prompt textarea", "a red circle")
    page.locator("#sc-settings button").first.click()
    page.locator("#sc-model input").click()
    page.get_by_role("option", name="broken checkpoint").click()
    page.click("#sc-start")
    expect(page.locator("#sc-message")).to_contain_text("failed to load")

    page.locator("#sc-model input").click()
    page.get_by_role("option", name=MODEL[0]).click()
    page.evaluate("(s) => window.streamerCanvas.load(s)", [])
    page.click("#sc-start")
    _wait_frames(page, 12)
    page.click("#sc-stop")
    expect(page.locator("#sc-message")).to_contain_text("stopped after")


def _settled_frames(page, quiet_s: float = 1.5, timeout: float = 15.0) -> int:
    """The page's frame count once it has stopped changing for `quiet_s`."""
    end = time.monotonic() + timeout
    last, since = _frames(page), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.2)
        now = _frames(page)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise TimeoutError("frames kept arriving after Stop")


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Page-side record of when the live image changed (what the user sees), for pacing measurements.
WATCH_JS = """() => { window.scShown = []; let last = "";
  const tick = () => { const img = document.querySelector('#sc-live img');
    if (img && img.src && img.src !== last) { last = img.src; window.scShown.push(performance.now()); }
    requestAnimationFrame(tick); };
  requestAnimationFrame(tick); }"""


def test_three_pages_stream_at_once_apart_and_closing_frees(server, open_page):
    app = server[1]
    pages = [open_page() for _ in range(3)]
    for k, page in enumerate(pages):  # each paints its own path
        _draw(page, [(0.2 + 0.05 * i, 0.2 + 0.25 * k) for i in range(6)])
        expect(page.locator(".sc-msg")).to_contain_text("1 track(s)")
    for page in pages:
        page.click("#sc-start")
    # Every page at once, no queue: the streams never end, so a queued page would never see a
    # frame. And turns (one chunk each, round-robin): when the last page shows its first frame, no
    # other page has shown more than its first 4 chunks (9 + 3 x 12 frames). Counted in frames, not
    # seconds, so a slower CPU passes too (CI's took 7.7 s to the last first frame, this one ~4 s).
    ahead: list[int] | None = None
    end = time.monotonic() + 60
    while ahead is None and time.monotonic() < end:
        counts = [_frames(p) for p in pages]
        if min(counts) >= 1:
            ahead = counts
        time.sleep(0.1)
    assert ahead is not None, f"a page never showed a frame: {[_frames(p) for p in pages]} frames"
    assert max(ahead) <= 9 + 3 * 12, f"frames shown when the last page began: {ahead}"
    keys = [p.evaluate("window.streamerCanvas.cid") for p in pages]
    lives = [app.lives[k] for k in keys]
    assert len({id(lv.session) for lv in lives}) == 3 and all(len(lv.strokes) == 1 for lv in lives)
    ys = [lv.strokes[0].points[0, 1] for lv in lives]
    assert ys[0] < ys[1] < ys[2], "each page keeps its own path"
    counts = [_wait_frames(p, 24) for p in pages]
    srcs = [p.locator("#sc-live img").get_attribute("src") for p in pages]
    assert len(set(srcs)) == 3, "no page shows another's frames"

    pages[0].close()  # closing one tab frees it; the other two keep streaming
    end = time.monotonic() + 15
    while keys[0] in app.lives and time.monotonic() < end:
        time.sleep(0.2)
    assert keys[0] not in app.lives and lives[0].session is None and not lives[0].workdir.exists()
    for p, n in zip(pages[1:], counts[1:]):
        _wait_frames(p, n + 24)
    for p in pages[1:]:
        p.click("#sc-stop")
        expect(p.locator("#sc-stats")).to_contain_text("not streaming")  # stale FPS line cleared


def test_a_huge_window_or_size_is_refused_without_memory_growth(server, open_page):
    page = open_page()
    page.locator("#sc-settings button").first.click()
    knobs = page.get_by_label("policy knobs (k=v ...)")
    expect(knobs).not_to_have_value("")  # the model's own knobs have arrived: they cannot overwrite ours later
    before = _rss_mb()
    _fill_settled(knobs, "window=100000")
    expect(knobs).to_have_value("window=100000")
    page.click("#sc-start")
    expect(page.locator("#sc-message")).to_contain_text("GiB")
    expect(page.locator("#sc-message")).to_contain_text("lower")
    assert _rss_mb() - before < 50, f"RSS grew {_rss_mb() - before:.0f} MB"
    page.locator("#sc-steps input").fill("100")
    page.click("#sc-start")
    expect(page.locator("#sc-message")).to_contain_text("steps must be a whole number from 1 to 8; got 100")
    # the server keeps serving: the same page streams with sane settings
    knobs.fill("")
    page.locator("#sc-steps input").fill("4")
    page.click("#sc-start")
    _wait_frames(page, 12)
    page.click("#sc-stop")


def _quantiles(gaps):
    return [round(sorted(gaps)[int(q * (len(gaps) - 1))]) for q in (0, .1, .25, .5, .75, .9, .95, 1)]


def test_playback_is_even(server, open_page, monkeypatch):
    """Frames leave the server evenly from the buffer: over ~12 s of streaming, the p95 interval between
    frames sent stays under 2x the mean (at 16 fps when generation keeps up, else the generated rate);
    what the page shows is measured too (its image loads add the browser's own jitter)."""
    from streamer.scheduler import Pacer

    sent: list[float] = []
    showed = Pacer.showed
    monkeypatch.setattr(Pacer, "showed", lambda self, now=None: (sent.append(time.perf_counter()), showed(self, now)))
    page = open_page()
    page.click("#sc-start")
    _wait_frames(page, 12)
    page.evaluate(WATCH_JS)
    sent.clear()
    time.sleep(12)
    shown = page.evaluate("window.scShown")
    # a prompt switch: applied at the next chunk, on screen once the frames already made (the server's
    # buffer at the click) have played and the chunk in progress plus the re-cached one are made
    fps = _fps(page)
    page.fill("#sc-prompt textarea", "a blue square on a grass background")
    buffered = int(page.get_attribute("#sc-stats", "data-buffer"))
    t0 = time.monotonic()
    page.click("#sc-apply")
    while page.get_attribute("#sc-stats", "data-prompt") != "a blue square on a grass background":
        assert time.monotonic() - t0 < 30, "the new prompt never reached the screen"
        time.sleep(0.02)
    latency, chunk_s = time.monotonic() - t0, 12 / fps
    print(f"prompt switch on screen after {latency:.2f} s; one chunk plays {chunk_s:.2f} s; "
          f"{buffered} frames were buffered at the click")
    page.click("#sc-stop")
    server_gaps = [1e3 * (b - a) for a, b in zip(sent, sent[1:])]
    gaps = [b - a for a, b in zip(shown, shown[1:])]
    print("\nserver send interval ms quantiles", _quantiles(server_gaps), "mean", round(sum(server_gaps) / len(server_gaps)))
    print("page shown interval ms quantiles", _quantiles(gaps), "mean", round(sum(gaps) / len(gaps)))
    print(page.inner_text("#sc-stats"))
    s_mean, s_p95 = sum(server_gaps) / len(server_gaps), sorted(server_gaps)[int(0.95 * len(server_gaps))]
    assert s_p95 < 2 * s_mean, f"server send interval p95 {s_p95:.0f} ms vs mean {s_mean:.0f} ms"
    assert len(gaps) > 40, f"only {len(gaps)} frames shown in 12 s"
    mean, p95 = sum(gaps) / len(gaps), sorted(gaps)[int(0.95 * len(gaps))]
    # the page adds its own jitter (each frame goes out as an event, then an image file fetched over HTTP,
    # on a 2-core CPU shared with the stream's compute and the browser): held to 3x there, 2x at the server
    assert p95 < 3 * mean, f"shown-frame interval p95 {p95:.0f} ms vs mean {mean:.0f} ms"
    # what the switch waits for: the frames buffered at the click, the chunk in progress (old prompt),
    # its frames played, then the re-cached chunk made. A fixed "three chunks" ignored the buffer and
    # failed 3 runs in 5 on the 2-core CPU (3.33 s vs 2.93, 3.54 vs 3.42, 3.20 vs 3.72 with 5 frames
    # buffered...); measured 2.28-3.65 s, within 0.2-3 s of this bound
    bound = buffered / fps + 3 * chunk_s
    assert latency < bound, (f"prompt switch shown after {latency:.2f} s; {buffered} buffered frames "
                             f"+ three chunks of {chunk_s:.2f} s allow {bound:.2f} s")


# ---- issue 16: upload a start image, drag from the object in it ------------------------------------
# The start picture: one blue circle (radius 9 px) on World's sand background, at (32, 64) of the
# 128x128 frame; the stroke drags it 64 px to the right. Measured on the shipped model through the
# page's own path (App._open/_step, seeds 0 and 5, strokes of 0.8 to 3.5 s): the circle is found by
# colour in 61/61 frames and ends 0-3 px from the stroke's end (64 px from its start). Pairs the
# model holds less well: a red circle on sand turns green then purple as it moves (found in 19/61
# frames), green on sand and red on snow fade out; red on grass, yellow on grass or night, white
# on stone, orange on night and purple on snow follow too. With no path painted the circle fades
# into the sand (found in 5/61 frames, none in the last 12). A stroke that starts off the circle
# (46 px below it) does not leave it in place: this small model binds a track to the prompt's
# sprite, not to what lies under the stroke, so the circle vanishes and reappears on the stroke.
SPRITE_FROM, SPRITE_TO, SPRITE_RADIUS = (32.0, 64.0), (96.0, 64.0), 9.0
FOLLOW_FRAMES = 61          # the picture + 5 chunks of 12 frames
END_FRAMES = 12             # the last chunk: where the circle must have arrived (the pen lifted long before)


def _start_picture(path: Path) -> Path:
    from PIL import Image

    from streamer.world.scenes import Sprite, World

    world = World()
    img = world.background("sand", 1).copy()
    world.draw(img, Sprite("circle", "blue", SPRITE_RADIUS), *SPRITE_FROM)
    Image.fromarray(img).save(path)
    return path


def _recorded_frames(live, n: int):
    """The first n frames the page's stream made (its recording: every generated frame, in order)."""
    import numpy as np

    from streamer.images import read_video

    frames = []
    for f in read_video(live.snapshot(), what="recording"):
        frames.append(f)
        if len(frames) == n:
            break
    return np.stack(frames)


def _follow(frames, trajectory) -> dict:
    """Where the blue circle is (its colour centroid, per frame) against the painted track at that frame."""
    import numpy as np

    from streamer.world.scenes import COLOURS, colour_centroid

    found = [colour_centroid(f, COLOURS["blue"]) for f in frames]
    seen = [i for i, c in enumerate(found) if c is not None]
    err = [float(np.hypot(*(np.array(found[i]) - trajectory.tracks[i, 0]))) for i in seen]
    end = [found[i] for i in seen if i >= len(frames) - END_FRAMES]
    out = {"found": len(seen), "frames": len(frames), "median_err": float(np.median(err)) if err else float("inf"),
           "end_seen": len(end)}
    if end:
        at = np.mean(end, 0)
        out.update(end_at=tuple(round(float(v), 1) for v in at), to_end=float(np.hypot(*(at - SPRITE_TO))),
                   to_start=float(np.hypot(*(at - SPRITE_FROM))))
    return out


def _moved_along(m: dict) -> bool:
    # measured 61/61 found, median error ~1-2 px, 0-3 px from the end; the margins below are wide
    return (m["found"] >= 0.8 * m["frames"] and m["median_err"] <= 8.0 and m["end_seen"] >= END_FRAMES // 2
            and m["to_end"] <= 10.0 and m["to_start"] - m["to_end"] >= 40.0)


@pytest.mark.skipif(MODEL[0] != "default", reason="needs the shipped weights: a random model follows no stroke")
def test_start_image_drag_from_the_object_moves_it_along_the_stroke(server, open_page, tmp_path):
    app = server[1]
    page = open_page()
    page.locator("#sc-start-image button").first.click()
    page.locator("#sc-start-file input[type=file]").set_input_files(str(_start_picture(tmp_path / "start.png")))
    expect(page.locator("#sc-message")).to_contain_text("the next Start begins from it")
    page.fill("#sc-prompt textarea", "a blue circle on a sand background")
    # a stroke from the circle's centre to 64 px right of it, drawn in ~1.5 s (about 2 px per frame)
    (x0, y0), (x1, y1), w, h = SPRITE_FROM, SPRITE_TO, *SIZE
    _draw(page, [((x0 + (x1 - x0) * i / 20) / w, (y0 + (y1 - y0) * i / 20) / h) for i in range(21)], pause=0.07)
    expect(page.locator(".sc-msg")).to_contain_text("1 track(s)")
    live = app.lives[page.evaluate("window.streamerCanvas.cid")]
    stroke = live.strokes[0]
    assert stroke.end_frame(live.fps) < FOLLOW_FRAMES - END_FRAMES, "the pen must lift before the last chunk"

    page.click("#sc-start")
    _wait_frames(page, FOLLOW_FRAMES, timeout=45)
    frames = _recorded_frames(live, FOLLOW_FRAMES)
    page.click("#sc-stop")
    expect(page.locator("#sc-message")).to_contain_text("stopped after")
    traj = live.trajectory(FOLLOW_FRAMES)
    assert abs(traj.tracks[0, 0, 0] - x0) < 3 and abs(traj.tracks[0, 0, 1] - y0) < 3, "the stroke starts on the circle"
    m = _follow(frames, traj)
    print("\nwith the stroke:", m)
    assert _moved_along(m), m

    # the same check fails when nothing is dragged: same picture and prompt, the path cleared
    page.evaluate("window.streamerCanvas.load([])")
    expect(page.locator(".sc-msg")).to_contain_text("drag to paint")
    page.click("#sc-start")
    expect(page.locator("#sc-message")).to_contain_text("no path painted")
    _wait_frames(page, FOLLOW_FRAMES, timeout=45)
    frames = _recorded_frames(live, FOLLOW_FRAMES)
    page.click("#sc-stop")
    still = _follow(frames, traj)
    print("no path:", still)
    assert not _moved_along(still), still
