"""`streamer serve`: paint trajectories over the live frame and watch the stream follow them (Gradio 6).

One browser page = one `Live`: its Session, its painted tracks, its recording. The page's canvas
makes a random id and sends it with every event (as the canvas component's value) and with every
call of its server functions, which Gradio runs outside the queue and without a session hash; the
`Live` is found by that id. Closing the tab fires `unload`, which ends the stream and frees it.

All model work on a device runs on its scheduler's one compute thread (streamer/scheduler.py): the
live streams of every page and API client advance in turn, one chunk each, up to `max_live` at once;
past that a page is told its place in line. Pages share the model and its streaming decoder
(weights only); each page's Session carries its own cache, noise, conditioning and decoder state, so
streams interleave chunk by chunk and a paused stream resumes exactly where it was. Frames leave at
an even pace (scheduler.Pacer) from a buffer of about one chunk.
"""

from __future__ import annotations

import argparse
import errno
import html
import json
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np

from streamer.models.frames import FrameRule
from streamer.models.text import overflow_note
from streamer.pipeline import Pipeline
from streamer.errors import StreamerError
from streamer.policies import BOUNDED_POLICIES, policy_knobs
from streamer.sampler import own_sampler
from streamer.scheduler import DONE, Job, Pacer, Placer, Scheduler
from streamer.session import Session, StreamChunk, latent_size
from streamer.trajectory import Trajectory, from_wan_move, to_ati_json, to_wan_move
from streamer.ui import params
from streamer.ui.strokes import MAX_POINTS, Stroke, parse_strokes, strokes_to_trajectory, trajectory_to_strokes
from streamer.video import Mp4Writer

UI_DIR = Path(__file__).parent
MAX_LIVE = 4             # streams advancing at once per device (more wait in line)
CANVAS_WIDTH = 384       # canvas pixels across; mirrors setAspect() in canvas.js
EXPORT_FORMATS = ["project (.npz)", "project (.json)", "Wan-Move (.npy)", "ATI (.json)"]


def canvas_size(frame: tuple[int, int]) -> tuple[int, int]:
    return CANVAS_WIDTH, round(CANVAS_WIDTH * frame[1] / frame[0])


def video_frame_of_latent(latent: int) -> int:
    """First video frame decoded from a latent frame (frame 0 -> 1 frame, each later one -> 4)."""
    return FrameRule().first_video_frame(latent)


class Models:
    """The installed models by label, each loaded on first use and then kept."""

    def __init__(self, choices: dict[str, dict]):
        self.choices = choices
        self._loaded: dict[str, Pipeline] = {}
        self._lock = threading.Lock()

    def get(self, label: str, device: str | None = None) -> Pipeline:
        """The model `label` on `device` (None: the device its choice names)."""
        if label not in self.choices:
            raise ValueError(f"unknown model {str(label)[:60]!r} (choose from {', '.join(self.choices)})")
        kw = dict(self.choices[label], **({"device": device} if device else {}))
        key = (label, kw.get("device"))
        with self._lock:
            if key not in self._loaded:
                try:
                    self._loaded[key] = Pipeline.load(**kw)
                except Exception as e:  # any failure (bad file, wrong keys, OOM) must leave the app working
                    raise ValueError(f"model {label!r} failed to load: {e}") from None
            return self._loaded[key]


class Live:
    """One browser page's stream, tracks and recording."""

    def __init__(self, key: str, size: tuple[int, int], fps: float):
        self.key = key
        self.size, self.fps = size, fps
        self.pipe: Pipeline | None = None
        self.session: Session | None = None
        self.sched: Scheduler | None = None    # the device's scheduler this stream runs on
        self.buffer: deque = deque()           # (frame, chunk) made, not yet shown
        self.job: Job | None = None            # the stream's place in it
        self.run = 0                           # bumped by start/pause/stop: a loop of an older run ends
        self.streaming = False
        self.begun_latents = 0                 # latent frames whose chunk has started computing
        self.shown = 0                         # video frames shown
        self.strokes: list[Stroke] = []
        self.canvas = canvas_size(size)
        self.first_seen: dict[str, int] = {}   # stroke id -> its start frame
        self.lock = threading.Lock()           # the recording: written by the stream, read by downloads
        self.writer: Mp4Writer | None = None
        self.recorded = 0                      # frames in the finished recording, once stopped
        self.workdir = Path(tempfile.mkdtemp(prefix="streamer-ui-"))
        self.start_image = None                # a StartImage the next Start begins from (issue 16), or None
        self.start_latents = 0                 # latent frames of that start the stream's first step makes
        self.last_frame: np.ndarray | None = None  # uint8 [H, W, 3], the newest frame made ("current frame")

    # ---- tracks ---------------------------------------------------------------------------------
    def set_strokes(self, strokes: list[Stroke], canvas: tuple[float, float]) -> dict[str, str]:
        """Adopt the page's strokes; a stroke first seen mid-stream starts at the first frame of the
        next chunk to be made. Returns each stroke's role (its colour on the page)."""
        now = video_frame_of_latent(self.begun_latents) if self.streaming else 0
        roles = {}
        for s in strokes:
            if s.start is None:
                s.start = self.first_seen.setdefault(s.id, now)
            roles[s.id] = "static" if s.static else "live" if s.start > 0 else "pre-drawn"
        self.strokes, self.canvas = strokes, canvas  # one assignment each: the stream reads a snapshot
        return roles

    def trajectory(self, num_frames: int) -> Trajectory | None:
        return strokes_to_trajectory(self.strokes, self.canvas, self.size, self.fps, num_frames)

    def tracks_for(self, frames: list[int]) -> Trajectory | None:
        """The painted tracks as they are now, long enough for latent frames `frames` (read once per
        chunk, before it starts, so edits apply at the next chunk and a chunk uses one reading)."""
        if self.pipe is None or not self.pipe.model.config.track_channels:
            return None
        return self.trajectory(self.pipe.decoder.frames.video_frames(max(frames) + 1))

    # ---- recording ------------------------------------------------------------------------------
    def record(self, frames: np.ndarray) -> None:
        with self.lock:
            if self.writer is not None:
                self.writer.write(frames)

    def snapshot(self) -> Path:
        """A copy of the recording as it is now (the fragmented mp4 is playable at every instant),
        named by the frames it holds: while the stream runs, every frame made but the newest, which
        the muxer keeps until the next one (`Mp4Writer.frames_on_disk`)."""
        src = self.workdir / "recording.mp4"
        with self.lock:
            if not src.exists():
                raise ValueError("nothing recorded yet: start a stream first")
            held = self.writer.frames_on_disk if self.writer is not None else self.recorded
            if held == 0:  # the first frame made waits in the muxer until the second
                raise ValueError("nothing recorded yet: the first frames are on their way")
            out = self.workdir / f"streamer-{held}-frames.mp4"
            shutil.copyfile(src, out)
        return out

    def stop(self) -> None:
        self.run += 1
        self.streaming = False
        if self.job is not None and self.sched is not None:
            self.sched.remove(self.job)  # its slot goes to the first page in line
        self.job = self.session = None
        self.buffer.clear()
        with self.lock:
            if self.writer is not None:
                self.writer.close()
                self.recorded = self.writer.frames_written
                self.writer = None

    def close(self) -> None:
        """The tab is gone: end the stream and free everything it held."""
        self.stop()
        self.strokes = []
        shutil.rmtree(self.workdir, ignore_errors=True)


def message(text: str, error: bool = False) -> str:
    cls = "sc-error" if error else "sc-note"
    return f'<div class="{cls}">{"⚠ " if error else ""}{html.escape(text)}</div>'


IDLE_STATS = '<div id="sc-stats" data-frames="0">not streaming</div>'


def stats_html(live: Live, chunk: StreamChunk, pacer: Pacer, buffered: int) -> str:
    """Generated FPS (this stream's share of the device), shown FPS (what the page plays) and the
    buffer between them, in frames."""
    secs = chunk.dit_seconds + chunk.decode_seconds
    gen_fps = pacer.generated_fps() or (len(chunk.frames) / secs if secs > 0 else 0.0)
    w, h = live.size
    live_n, line = live.sched.counts() if live.sched is not None else (1, 0)
    share = f" · {live_n} streams share the device" if live_n > 1 else ""
    return (f'<div id="sc-stats" data-frames="{live.shown}" data-fps="{gen_fps:.2f}" data-buffer="{buffered}" '
            f'data-chunk="{chunk.index}" data-prompt="{html.escape(chunk.prompt)}">'
            f'<b>{gen_fps:.1f} FPS</b> generated · shown {pacer.shown_fps():.1f} fps · buffer {buffered} frames · '
            f'chunk {secs * 1e3:.0f} ms (DiT {chunk.dit_seconds * 1e3:.0f} + decode {chunk.decode_seconds * 1e3:.0f}) · '
            f'frame <span class="sc-frame">{live.shown}</span> · {w}x{h}{share}</div>')


def cache_html(chunk: StreamChunk) -> str:
    """Which cached frames the chunk attended to (sink / window / compressed / the chunk itself),
    at which RoPE positions, and per layer the share of attention each received."""
    plan = chunk.plan
    if plan is None:
        return ""
    kinds = (plan.history_kinds or ["window"] * len(plan.history_slots)) + ["compressed", "chunk"]
    # the chunk's own frames as the stream numbers them (from the first shown one: `Session`'s hidden
    # chunks, in the cache as the sink, come before it); history columns are attention positions
    labels = [f"{p:g}" for p in plan.history_positions] + [f"{plan.compressed_span:g}",
                                                            ",".join(map(str, chunk.latent_frames))]
    keep = [i for i, k in enumerate(kinds) if k != "compressed" or plan.compressed_span > 0]
    head = "".join(f'<td class="k-{kinds[i]}" title="{kinds[i]}">{labels[i]}</td>' for i in keep)
    rows = [f"<tr><th>kind/pos</th>{head}</tr>"]
    if chunk.attention_mass is not None:
        mass = chunk.attention_mass.float().numpy()[:, keep]
        for layer, row in enumerate(mass):
            # shade against the busiest *history* entry: the chunk attending to itself would wash it out
            top = row[:-1].max() if len(row) > 1 and row[:-1].max() > 0 else row.max() or 1.0
            cells = "".join(f'<td style="background: rgba(220,60,30,{min(v / top, 1):.2f})" title="{v:.3f}"></td>'
                            for v in row)
            rows.append(f"<tr><th>layer {layer}</th>{cells}</tr>")
    legend = " ".join(f'<span class="k-{k}">&nbsp;{k}&nbsp;</span>' for k in ("sink", "window", "compressed", "chunk"))
    legend += (' · attention share <span class="sc-scale" title="0 = none; full = the most attended cached frame">'
               '0<i></i>max</span>')
    # which position mode the chunk took: a policy with `untracked_positions` switches chunk by chunk
    mode = f", {plan.position_mode} positions" if plan.position_mode else ""
    return (f'<div class="sc-cache">chunk {chunk.index} (latent frames {chunk.latent_frames[0]}..'
            f'{chunk.latent_frames[-1]}{mode}): '
            f'{legend}<table>{"".join(rows)}</table></div>')


def knobs_text(name: str, pipe_defaults: dict | None = None) -> str:
    knobs = policy_knobs(name)
    if pipe_defaults and pipe_defaults.get("policy") == name:
        knobs.update(pipe_defaults.get("policy_args", {}))
    return " ".join(f"{k}={v}" for k, v in knobs.items())


class App:
    """The page's handlers. `devices`: where streams run (one scheduler each; None: where each model's
    choice says); `max_live`: streams advancing at once per device."""

    def __init__(self, models: dict[str, dict], size: tuple[int, int] | None = None,
                 devices: list[str] | None = None, max_live: int = MAX_LIVE):
        from streamer.memory import free_bytes

        self.models = Models(models)
        self.default_model = next(iter(models))
        self.size_override = size
        self.placer = Placer(list(devices or [None]), max_live, free=lambda d: free_bytes(d or "cpu"))
        self.lives: dict[str, Live] = {}
        self.pages: dict[str, str] = {}          # Gradio session hash -> page id (for unload)

    def frame_size(self, pipe: Pipeline) -> tuple[int, int]:
        return self.size_override or pipe.native_size

    def live(self, key: str, request: gr.Request | None = None) -> Live:
        if not key or not isinstance(key, str) or len(key) > 64:
            raise ValueError("the page has not finished loading; try again")
        if request is not None and request.session_hash:
            self.pages[request.session_hash] = key
        if key not in self.lives:
            pipe = self.models.get(self.default_model)
            self.lives[key] = Live(key, self.frame_size(pipe), pipe.fps)
        return self.lives[key]

    def unload(self, request: gr.Request) -> None:
        key = self.pages.pop(request.session_hash, None)
        live = self.lives.get(key) if key else None
        if live is not None:
            live.close()  # free first: a page absent from `lives` has nothing left on disk or in memory
            self.lives.pop(key, None)

    # ---- work on a device's compute thread ---------------------------------------------------------
    def _open(self, live: Live, model: str, prompt: str, config_kw: dict, device: str | None = None,
              size: tuple[int, int] | None = None) -> None:
        """Open the page's stream (Session admission first: a stream that cannot fit is refused here,
        before anything is allocated). Runs on the compute thread of the device it will use."""
        pipe = self.models.get(model, device)
        width, height = size or self.frame_size(pipe)
        latent_size(pipe, width, height)  # refuses impossible sizes with a clear message
        config = pipe.stream_config(size=(width, height), **config_kw)
        start = None
        if live.start_image is not None:  # the picture by the size rule, encoded by the model's own encoder
            from streamer.images import encode_frames, fit_start_image

            start = encode_frames(pipe, fit_start_image(live.start_image, width, height).pixels[None])
        session = Session(pipe, prompt, config, start_latents=start)
        live.stop()
        live.start_latents = 0 if start is None else start.shape[2]  # the first step makes these, not a chunk
        live.pipe, live.session, live.size, live.fps = pipe, session, (width, height), pipe.fps
        live.begun_latents = live.shown = 0
        live.first_seen = {s.id: 0 for s in live.strokes}  # what was drawn before the start plays from frame 0
        for s in live.strokes:
            s.start = 0
        with live.lock:  # a download meanwhile copies the old file whole, not a truncated new one
            live.writer = Mp4Writer(live.workdir / "recording.mp4", fps=pipe.fps, width=width, height=height)

    def _step(self, live: Live, session: Session) -> StreamChunk | None:
        """The page's next chunk, recorded as it is made (the recording holds every generated frame)."""
        if live.session is not session:  # stopped while queued
            return None
        n = live.start_latents or session.config.chunk_frames
        live.start_latents = 0
        session.set_tracks(live.tracks_for(list(range(session.latent_frames_done, session.latent_frames_done + n))))
        live.begun_latents += n
        chunk = session.step()
        live.record(chunk.frames)
        live.last_frame = chunk.frames[-1]
        return chunk

    def place(self) -> tuple[Scheduler, str | None]:
        i = self.placer.pick()
        return self.placer.schedulers[i], self.placer.devices[i]

    # ---- event handlers ---------------------------------------------------------------------------
    def start(self, key: str, prompt: str, seed, model: str, policy: str, knobs: str, steps,
              show_cache: bool, request: gr.Request, anchor: bool | None = None) -> Iterator[tuple]:
        """Open and play the page's stream. `anchor`: the drift anchor on or off (`streamer.anchor`;
        the Settings checkbox), None: the model's own."""
        try:
            live = self.live(key, request)
            prompt = params.prompt_text(prompt)
            chunk_frames = 3
            config_kw = dict(chunk_frames=chunk_frames, steps=params.whole("steps", steps, 1, params.STEPS_MAX),
                             policy=policy, policy_args=params.knobs(policy, knobs, chunk_frames),
                             seed=params.whole("seed", seed, 0, params.SEED_MAX),
                             drift_anchor=None if anchor is None else bool(anchor))
            yield gr.skip(), IDLE_STATS, gr.skip(), message(f"loading {model} ...")
            sched, device = self.place()
            sched.call(self._open, live, model, prompt, config_kw, device)
            cut = overflow_note(live.pipe.text_encoder, prompt)  # the part of a long prompt the model ignores
            live.sched = sched
            live.job = Job(partial(self._step, live, live.session), ahead=1)
            live.job.paused = True  # until _play reads it
            sched.submit(live.job)
        except Exception as e:  # the page's bad input or a model that cannot run: say so, keep serving
            yield gr.skip(), IDLE_STATS, gr.skip(), message(str(e), error=True)
            return
        live.session.record_attention = bool(show_cache)
        hint = "" if live.strokes or not live.pipe.model.config.track_channels else \
            " · no path painted: this model moves objects along painted paths, so expect mostly background"
        hint += f" · {cut}" if cut else ""
        yield from self._play(live, f"streaming with {live.pipe.description}{hint}")

    def resume(self, key: str, request: gr.Request) -> Iterator[tuple]:
        live = self.lives.get(key)
        if live is None or live.session is None or live.job is None:
            yield gr.skip(), gr.skip(), gr.skip(), message("nothing to resume: press Start", error=True)
            return
        yield from self._play(live, "resumed")

    def _play(self, live: Live, note: str) -> Iterator[tuple]:
        """Take the stream's chunks from its scheduler and show their frames at an even pace."""
        live.run += 1
        run, job, sched = live.run, live.job, live.sched
        live.streaming = True
        sched.pause(job, False)
        yield gr.skip(), gr.skip(), gr.skip(), message(note)
        pacer = Pacer(live.fps, live.session.config.chunk_frames * 4)
        buffer = live.buffer  # kept on the page: frames made before a Pause are shown after Resume
        chunk, due, waiting = None, 0.0, None
        try:
            while live.run == run:
                pos = sched.position(job)
                if pos > 0:  # in line: say where, honestly (no time estimate)
                    text = (f"all {sched.max_live} stream slots are busy: you are number {pos} in line; "
                            f"your stream starts as soon as one ends")
                    if text != waiting:
                        waiting = text
                        yield gr.skip(), gr.skip(), gr.skip(), message(text)
                    time.sleep(0.2)
                    continue
                if waiting is not None:
                    waiting = None
                    yield gr.skip(), gr.skip(), gr.skip(), message(note)
                now = time.perf_counter()
                if buffer and now >= due:
                    frame, chunk = buffer.popleft()  # with the chunk it came from: its stats and prompt
                    interval = pacer.interval(len(buffer))
                    due = due + interval if due > now - interval else now + interval  # after a stall: restart the clock
                    pacer.showed(now)
                    live.shown += 1
                    yield frame, stats_html(live, chunk, pacer, len(buffer)), gr.skip(), gr.skip()
                    continue
                wait = max(0.0, due - now) if buffer else 0.25
                # the next chunk is made only once about one chunk is left to show: little is ever in
                # flight, so a prompt or path change reaches the screen within about two chunks
                ahead = 1 if len(buffer) <= pacer.chunk else 0
                if ahead != job.ahead:
                    job.ahead = ahead
                    sched.wake()
                item = job.get(timeout=wait)
                if item is DONE:
                    if job.error is not None:
                        raise job.error
                    return
                if item is not None and live.run != run:  # paused or stopped while it arrived: keep it
                    job.out.put(item)
                    return
                if item is not None:
                    pacer.arrived(len(item.frames))
                    buffer.extend((f, item) for f in item.frames)
                    if live.session is not None and live.session.record_attention:
                        yield gr.skip(), gr.skip(), cache_html(item), gr.skip()
        except Exception as e:  # a failing step (bad checkpoint at run time, OOM) ends this stream only
            live.stop()
            yield gr.skip(), IDLE_STATS, gr.skip(), message(f"stream stopped: {e}", error=True)
        finally:
            if live.run == run:
                live.streaming = False

    def pause(self, key: str) -> tuple[str, str]:
        live = self.lives.get(key)
        if live is None or live.session is None:
            return message("nothing is streaming"), IDLE_STATS
        live.run += 1
        live.streaming = False
        if live.job is not None:
            live.sched.pause(live.job)
        return message(f"paused at frame {live.shown}: Resume continues the same stream"), gr.skip()

    def stop(self, key: str) -> tuple[str, str]:
        live = self.lives.get(key)
        if live is None:
            return message("nothing is streaming"), IDLE_STATS
        live.stop()
        return message(f"stopped after {live.shown} frames; the recording is complete"), IDLE_STATS

    def idle_stats(self, key: str):
        """The stats line once nothing streams ("not streaming"); left as it is while a stream runs."""
        live = self.lives.get(key)
        return IDLE_STATS if live is None or live.session is None else gr.skip()

    def set_prompt(self, key: str, prompt: str) -> str:
        live = self.lives.get(key)
        try:
            prompt = params.prompt_text(prompt)
        except StreamerError as e:
            return message(f"{e}; kept the current one", error=True)
        if live is None or live.session is None:
            return message("the prompt will be used when you press Start")
        live.session.set_prompt(prompt)
        cut = overflow_note(live.pipe.text_encoder, prompt)
        return message(f"prompt switched (re-caching at the next chunk): {prompt}" + (f" · {cut}" if cut else ""))

    def download(self, key: str) -> tuple:
        try:
            live = self.lives.get(key)
            if live is None:
                raise ValueError("nothing recorded yet: start a stream first")
            path = live.snapshot()
        except ValueError as e:
            return None, message(str(e), error=True)
        return gr.File(str(path), visible=True), message(f"recording: {path.name}")

    def export(self, key: str, fmt: str) -> tuple:
        live = self.lives.get(key)
        if live is None or not live.strokes:
            return None, message("no tracks to export: paint some first", error=True)
        frames = max(s.end_frame(live.fps) for s in live.strokes) + 1
        traj = live.trajectory(frames)
        out = live.workdir / "export"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        if fmt == "Wan-Move (.npy)":
            to_wan_move(traj, out)
            files = [out / "tracks.npy", out / "visibility.npy"]
        elif fmt == "ATI (.json)":
            files = [out / "tracks_ati.json"]
            files[0].write_text(json.dumps(to_ati_json(traj)))
        else:
            files = [out / ("trajectory.json" if "json" in fmt else "trajectory.npz")]
            traj.save(files[0])
        return [str(f) for f in files], message(f"exported {traj.num_tracks} tracks, {traj.num_frames} frames")

    def set_start_image(self, key: str, file) -> tuple:
        """The uploaded picture becomes the first frame of the next Start (resized to cover the
        stream's size and centre-cropped) and is shown in the live view, so the canvas draws over it
        and a stroke can start on what is in the picture. Returns (live image, message); bad files
        are one line, without server paths."""
        from streamer.images import fit_start_image, read_image

        path = Path(getattr(file, "name", file)) if file else None
        try:
            live = self.live(key)
            if path is None:
                live.start_image = None
                return gr.skip(), message("start image cleared: Start begins from text")
            picture = read_image(path, what="start image")
        except StreamerError as e:
            return gr.skip(), message(str(e).replace(str(path), path.name if path else ""), error=True)
        live.start_image = picture
        notes = "; ".join(n.replace(str(path), path.name) for n in picture.notes)
        w, h = picture.source_size
        shown = fit_start_image(picture, *live.size).pixels  # as the stream will begin (the size rule)
        return shown, message(f"start image {path.name} ({w}x{h}): the next Start begins from it"
                              + (f" · {notes}" if notes else ""))

    def start_from_current(self, key: str) -> str:
        """The newest frame of the page's stream becomes the first frame of the next Start."""
        from streamer.images import StartImage

        live = self.lives.get(key)
        if live is None or live.last_frame is None:
            return message("no current frame yet: start a stream first", error=True)
        h, w = live.last_frame.shape[:2]
        live.start_image = StartImage(pixels=live.last_frame.copy(), source_size=(w, h), name="the current frame")
        return message(f"the next Start begins from the current frame (frame {live.shown})")

    def import_tracks(self, key: str, files: list | None) -> tuple:
        paths: list[Path] = []
        try:
            live = self.live(key)
            paths = [Path(getattr(f, "name", f)) for f in files or []]
            if not paths:
                raise ValueError("choose a trajectory file")
            names = {p.name: p for p in paths}
            kw = dict(width=live.size[0], height=live.size[1], fps=live.fps)
            if "tracks.npy" in names:
                traj = from_wan_move(names["tracks.npy"], visibility=names.get("visibility.npy"), **kw)
            elif paths[0].suffix == ".json":
                traj = Trajectory.load(paths[0], **kw)
            else:
                traj = Trajectory.load(paths[0])
            if traj.num_frames > MAX_POINTS:
                raise ValueError(f"trajectory has {traj.num_frames} frames (at most {MAX_POINTS})")
        except Exception as e:  # malformed uploads: numpy/JSON errors of every kind, said without server paths
            return None, message(f"import failed: {params.upload_error(e, paths)}",
                                 error=True)
        strokes = trajectory_to_strokes(traj, live.canvas)
        return strokes, message(f"imported {len(strokes)} tracks ({traj.num_frames} frames)")

    # ---- server functions (the canvas calls these directly, outside the queue) ----------------------
    def server_functions(self) -> list:
        def set_tracks(payload: dict) -> dict:
            try:
                if not isinstance(payload, dict):
                    raise ValueError("bad request")
                live = self.live(payload.get("cid"))
                canvas = payload.get("canvas")
                if not (isinstance(canvas, list) and len(canvas) == 2):
                    raise ValueError("canvas size missing")
                canvas = (float(canvas[0]), float(canvas[1]))
                strokes = parse_strokes(payload.get("strokes"), canvas)
                roles = live.set_strokes(strokes, canvas)
            except (ValueError, TypeError) as e:
                return {"ok": False, "message": f"tracks not applied: {e}"}
            note = "" if live.pipe is None or live.pipe.model.config.track_channels else \
                " (this model has no trajectory channels: tracks are recorded but do not steer it)"
            when = " from the next chunk" if live.streaming else ""
            return {"ok": True, "roles": roles, "size": list(live.size),
                    "message": f"{len(strokes)} track(s){when}{note}"}

        def canvas_info(payload: dict) -> dict:
            try:
                pipe = self.models.get(self.default_model)
            except ValueError as e:
                return {"size": [128, 128], "message": str(e)}
            note = "" if pipe.model.config.track_channels else " (this model has no trajectory channels)"
            return {"size": list(self.frame_size(pipe)),
                    "message": f"drag to paint a path (drawing speed = motion speed), click for an anchor{note}"}

        return [set_tracks, canvas_info]


CANVAS_HTML = """
<div class="sc-wrap">
  <canvas width="384" height="384"></canvas>
  <div class="sc-tools">
    <button class="sc-mode" title="path: drag to draw a moving track; anchor: click to pin a static point">mode: path</button>
    <button class="sc-delete" title="delete the selected track (or the last one)">delete</button>
    <button class="sc-clear">clear</button>
    <span class="sc-legend"><span><i style="background:#1e90ff"></i>pre-drawn</span><span><i style="background:#2ecc40"></i>live</span><span><i style="background:#ff4136"></i>static</span></span>
  </div>
  <div class="sc-list"></div>
  <div class="sc-msg"></div>
</div>
"""


def build_app(models: dict[str, dict] | None = None, size: tuple[int, int] | None = None,
              devices: list[str] | None = None, max_live: int = MAX_LIVE) -> gr.Blocks:
    """The app. `models`: label -> `Pipeline.load` keyword arguments (the first is the default);
    `size`: (width, height) of every stream (default: each model's native size); `devices`: one
    scheduler each, new streams on the one with the most free memory; `max_live`: per device."""
    models = models or {"default": {}, "tiny (random)": {"preset": "tiny"}}
    app = App(models, size, devices, max_live)
    js = (UI_DIR / "canvas.js").read_text()
    css = (UI_DIR / "canvas.css").read_text()
    try:  # the default model's own cache settings (what it was trained with) as the initial knobs
        defaults = app.models.get(app.default_model).stream_defaults or {}
    except ValueError:
        defaults = {}
    policy0 = defaults.get("policy", "window")
    steps0 = len(own_sampler(defaults["steps"]).steps) if "steps" in defaults else 4  # Self-Forcing's 4
    # every shown frame is a JPEG file in Gradio's cache: sweep each minute, keep five minutes' worth
    with gr.Blocks(title="streamer", delete_cache=(60, 300)) as demo:
        demo.streamer = app  # for tests and embedding
        gr.Markdown("## streamer — paint motion, watch the video follow it")
        with gr.Row():
            with gr.Column():
                canvas = gr.HTML(value="", html_template=CANVAS_HTML, js_on_load=js, server_functions=app.server_functions(),
                                 head=f"<style>{css}</style>", elem_id="sc-canvas")
            with gr.Column():
                live_img = gr.Image(label="live", format="jpeg", interactive=False, elem_id="sc-live",
                                    show_label=True, buttons=[], height=384)
                stats = gr.HTML(IDLE_STATS)
                cache = gr.HTML("", elem_id="sc-cache")  # beside the video: what the chunk attended to
        with gr.Row():
            prompt = gr.Textbox(label="prompt", value="a red circle on a grass background", scale=4,
                                elem_id="sc-prompt")
            apply_prompt = gr.Button("Apply prompt", scale=1, elem_id="sc-apply")
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="sc-start")
            pause = gr.Button("Pause", elem_id="sc-pause")
            resume = gr.Button("Resume", elem_id="sc-resume")
            stop = gr.Button("Stop", variant="stop", elem_id="sc-stop")
            record = gr.Button("Download mp4", elem_id="sc-download")
        note = gr.HTML("", elem_id="sc-message")
        recording = gr.File(label="recording", elem_id="sc-recording", interactive=False, visible=False)
        with gr.Accordion("Settings", open=False, elem_id="sc-settings"):
            with gr.Row():
                model = gr.Dropdown(list(models), value=app.default_model, label="model", elem_id="sc-model")
                seed = gr.Number(0, label="seed (0 to 2^63-1)", elem_id="sc-seed")  # checked, never rounded
                steps = gr.Number(steps0, label=f"denoising steps (1 to {params.STEPS_MAX})", elem_id="sc-steps")
            with gr.Row():
                policy = gr.Dropdown(list(BOUNDED_POLICIES), value=policy0, label="cache policy")
                knobs = gr.Textbox(knobs_text(policy0, defaults), label="policy knobs (k=v ...)", scale=3)
                show_cache = gr.Checkbox(True, label="cache panel + attention")
                # the default model's own; on holds a still background's brightness (streamer.anchor)
                anchor = gr.Checkbox(bool(defaults.get("drift_anchor", False)), label="drift anchor (still camera)",
                                     elem_id="sc-anchor")
        with gr.Accordion("Trajectory files", open=False, elem_id="sc-files"):
            with gr.Row():
                upload = gr.File(label="import (.npz / .json / ATI .json / Wan-Move tracks.npy + visibility.npy)",
                                 file_count="multiple", file_types=[".npz", ".json", ".npy"], elem_id="sc-import")
                with gr.Column():
                    fmt = gr.Radio(EXPORT_FORMATS, value=EXPORT_FORMATS[0], label="export as")
                    export = gr.Button("Export tracks")
                    exported = gr.File(label="exported", file_count="multiple", interactive=False)
        with gr.Accordion("Start image", open=False, elem_id="sc-start-image"):
            with gr.Row():
                start_file = gr.File(label="start from a picture (PNG / JPEG / WebP; resized to cover, centre-cropped)",
                                     file_types=[".png", ".jpg", ".jpeg", ".webp"], elem_id="sc-start-file")
                from_current = gr.Button("Start from the current frame", elem_id="sc-from-current")
        imported = gr.JSON(visible=False)

        outs = [live_img, stats, cache, note]
        # every page streams at once: the device's scheduler shares it and keeps the line
        ev_start = start.click(app.start, [canvas, prompt, seed, model, policy, knobs, steps, show_cache, anchor], outs,
                               concurrency_limit=None, show_progress="hidden")
        ev_resume = resume.click(app.resume, [canvas], outs, concurrency_limit=None, show_progress="hidden")
        streams = [ev_start, ev_resume]
        pause.click(app.pause, [canvas], [note, stats], cancels=streams, queue=False)
        # A frame's stats line sent just before Stop can reach the page after Stop's own (queue=False)
        # reply and bring the FPS line back. Queued events share the page's one ordered event stream,
        # so a queued follow-up lands after anything the stopped stream sent: it settles the line.
        stop.click(app.stop, [canvas], [note, stats], cancels=streams, queue=False).then(
            app.idle_stats, [canvas], [stats], concurrency_limit=None, show_progress="hidden")
        apply_prompt.click(app.set_prompt, [canvas, prompt], [note], queue=False)
        prompt.submit(app.set_prompt, [canvas, prompt], [note], queue=False)
        record.click(app.download, [canvas], [recording, note], queue=False).then(  # one click: save it at once
            None, None, None, js="() => setTimeout(() => document.querySelector('#sc-recording a')?.click(), 300)")
        policy.change(lambda name: knobs_text(name), [policy], [knobs], queue=False)
        export.click(app.export, [canvas, fmt], [exported, note], queue=False)
        start_file.change(app.set_start_image, [canvas, start_file], [live_img, note], queue=False)
        from_current.click(app.start_from_current, [canvas], [note], queue=False)
        upload.upload(app.import_tracks, [canvas, upload], [imported, note], queue=False).then(
            None, [imported], None, js="(s) => { if (s && window.streamerCanvas) window.streamerCanvas.load(s); }")
        demo.unload(app.unload)
    return demo


def _check_port(host: str, port: int) -> None:
    """Raises InputError (one line) when `host`:`port` cannot be bound: another server holds it, or
    the address is not this machine's. Otherwise uvicorn would log it after the page was announced."""
    import socket

    from streamer.errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InputError(f"--host {host!r} cannot be resolved: {e.strerror or e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing one is fine
        try:
            sock.bind(addr)
        except OSError as e:
            why = "is in use (another server?): pick another with --port" if e.errno == errno.EADDRINUSE \
                else f"cannot be bound: {e.strerror or e}"
            raise InputError(f"{host}:{port} {why}") from None


def serve(args: argparse.Namespace) -> int:
    """Run the page and the API (ui/api.py) in one process: uvicorn serving FastAPI with Gradio mounted."""
    import secrets

    import uvicorn

    from streamer.ui.api import make_server

    _check_port(args.host, args.port)  # before the models load: a busy port fails in a second, not after
    devices = args.device if isinstance(args.device, list) else [args.device] if args.device else None
    common: dict = {}
    models = {"default": dict(common), "tiny (random)": dict(common, preset="tiny")}
    for ckpt in args.checkpoint:
        options = {k: v for k, v in (("weights_key", getattr(args, "weights_key", None)), ("lora", getattr(args, "lora", None)),
                                     ("lora_scale", getattr(args, "lora_scale", None)),
                                     ("lora_alpha", getattr(args, "lora_alpha", None))) if v is not None}
        models[Path(ckpt).name] = dict(common, checkpoint=ckpt, vae=args.vae, text_encoder=args.text_encoder,
                                       checkpoint_options=options or None)
    size = tuple(args.size) if args.size else None  # (w, h), parsed and checked by ui/command.py
    demo = build_app(models, size, devices, getattr(args, "max_live", MAX_LIVE))
    demo.queue(default_concurrency_limit=None)
    token = getattr(args, "token", None)
    if not token and args.host not in ("127.0.0.1", "localhost", "::1"):
        token = secrets.token_urlsafe(16)  # reachable from other machines: the API is never open by default
        print(f"API token (send as Authorization: Bearer ...): {token}")
    where = ", ".join(devices) if devices else "the default device"
    print(f"streamer UI on http://{args.host}:{args.port} · API at /api · streams on {where}")
    uvicorn.run(make_server(demo, token), host=args.host, port=args.port, log_level="warning")
    return 0
