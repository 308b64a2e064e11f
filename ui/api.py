"""The headless streaming API of `streamer serve`, beside the page in the same process (FastAPI).

    POST   /api/sessions                    {prompt, model?, policy?, policy_args?, size?, seed?, steps?, guidance?,
                                             drift_anchor?, tracks?, image?}
                                            -> {id, position, device, width, height, fps, chunk_frames, policy,
                                                policy_args, drift_anchor, notes}
    GET    /api/sessions/{id}               -> {position, chunks, frames, paused, prompt}
    POST   /api/sessions/{id}/control       {prompt?, tracks?, action?: pause|resume|stop}
                                            -> {ok, applies_from_chunk, applies_from_frame, notes}
    WS     /api/sessions/{id}/frames?format=jpeg|rgb
           text {"type": "queued", "position": k} while in line; per chunk text {"type": "chunk", "index",
           "first_frame", "frames": n, "width", "height", "format", "dit_ms", "decode_ms", "generated_fps",
           "prompt"} then n binary messages (JPEG files, or raw RGB bytes H x W x 3); {"type": "end"} last
    GET    /api/sessions/{id}/recording.mp4 the stream so far (H.264), all but the newest frame while it runs
    DELETE /api/sessions/{id}               stop and free

Streams run on the same schedulers, with the same admission (Session's memory check) and the same
input checks (ui/params.py) as the page's. A session id (secrets.token_urlsafe, 128 bits) is the only
handle on a stream: nothing lists sessions, and one WebSocket reads a stream at a time. With a token
(`streamer serve --token`) every call must carry `Authorization: Bearer <token>` (or `?token=` on the
WebSocket). Bad requests get a 4xx whose `detail` is one line naming the field.

A start image (issue 16) is the `image` field: a PNG, JPEG or WebP file, base64 (a `data:` URL is
taken too). It is read with the checks of `generate --image` (streamer/images.py: corrupt, empty,
zero-size and oversized pictures refused, the size from the header before any pixel is decoded)
and fitted by the same size rule (resize to cover, centre-crop); alpha and grayscale are converted
and `notes` says so. The stream's first chunk is then that picture alone (one frame, the model's
own encoder and decoder round trip), and generation goes on from it. Tracks whose width x height
is the picture's own are mapped with it, as `generate --image --tracks` maps them.

`notes` also says when a prompt is longer than the model's text encoder reads (`text_len` tokens:
32 for the shipped model, 512 for umT5), and where it is cut.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import shutil
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

from streamer.errors import InputError, ResourceError, StreamerError
from streamer.images import StartImage, encode_frames, fit_points, fit_start_image, read_image
from streamer.memory import DECODER_BYTES_PER_PIXEL, StreamBytes, check_stream_fits
from streamer.models.text import overflow_note
from streamer.scheduler import DONE, Job, Scheduler
from streamer.session import Session, StreamChunk, latent_size
from streamer.trajectory import Trajectory, from_json
from streamer.ui import params
from streamer.video import Mp4Writer

FIELDS = {"prompt", "model", "policy", "policy_args", "size", "seed", "steps", "guidance", "drift_anchor", "tracks",
          "image"}
MAX_SESSIONS = 64          # API streams held at once (live, in line or paused), all devices
IDLE_SECONDS = 600         # a stream nobody has read or steered for this long is freed
MAX_BODY = 8 << 20         # bytes of a request body (tracks and a base64 start image included: ~6 MiB of file)


class ApiStream:
    """One API client's stream: its Session, its place on a scheduler, its recording."""

    def __init__(self, session: Session, sched: Scheduler, device: str | None):
        self.session, self.sched, self.device = session, sched, device
        self.id = secrets.token_urlsafe(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="streamer-api-"))
        cfg = session.config
        self.writer: Mp4Writer | None = Mp4Writer(self.workdir / "recording.mp4", fps=session.pipe.fps,
                                                  width=cfg.width, height=cfg.height)
        self.lock = threading.Lock()
        self.frames = 0
        self.reader = False
        self.seen = time.monotonic()
        self.job = Job(self._step, ahead=1, id=self.id)  # one chunk ahead: controls show within two

    def _step(self) -> StreamChunk:
        chunk = self.session.step()
        with self.lock:
            if self.writer is not None:
                self.writer.write(chunk.frames)
            self.frames += len(chunk.frames)
        return chunk

    def close(self) -> None:
        self.sched.remove(self.job)
        with self.lock:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _prompt_notes(pipe, prompt: str) -> list[str]:
    """`notes` for a prompt: one line if the text encoder reads only part of it."""
    note = overflow_note(pipe.text_encoder, prompt)
    return [note] if note else []


def _fail(status: int, text: str):
    raise HTTPException(status, detail=text)


def _unpath(text: str, path: Path) -> str:
    """read_image's message about the server's temp file `path` -> about the `image` field."""
    text = text.replace(f"image {path} is not an image", "image: not a picture")
    return text.replace(f"image {path}", "image").replace(str(path), "the image")


def _tracks_on_image(tracks: Trajectory | None, image: StartImage, size: tuple[int, int],
                     notes: list[str]) -> Trajectory | None:
    """Tracks drawn on the start image (`image` fitted to `size`; the tracks' width x height is the
    picture's own, not the video's) mapped by the size rule, so they stay on what they were drawn on;
    others as they are. Appends a note when it maps."""
    src = image.source_size
    if tracks is None or (tracks.width, tracks.height) != src or src == tuple(size):
        return tracks
    notes.append(f"the tracks are in the picture's {src[0]}x{src[1]} pixels: mapped with it (cover, centre-crop)")
    return Trajectory(fit_points(tracks.tracks, *src, *size), tracks.visible, tracks.fps, size[0], size[1], tracks.loop)


def _open(pipe, prompt: str, config, tracks, image: StartImage | None, device) -> Session:
    """The API stream's Session, on its device's compute thread. With a start image (already fitted
    to the stream's size): encoded by the model's own encoder into one clean latent frame
    [1, C, 1, h, w] that the Session's first step caches and decodes. The encode is admitted first
    (costed like a one-frame decode), so a picture on a size that cannot fit is refused before it is
    computed; the Session then admits the whole stream."""
    start = None
    if image is not None:
        check_stream_fits(StreamBytes(0, 0, 0, 0, config.width * config.height * DECODER_BYTES_PER_PIXEL),
                          device or pipe.device, f"{config.width}x{config.height}, encoding the start image")
        start = encode_frames(pipe, image.pixels[None])
    return Session(pipe, prompt, config, tracks=tracks, start_latents=start)


def encode(frame: np.ndarray, fmt: str) -> bytes:
    if fmt == "rgb":
        return np.ascontiguousarray(frame).tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Api:
    """The API's routes over an App's models and schedulers (see ui/app.py)."""

    def __init__(self, app, token: str | None = None):
        self.app = app
        self.token = token
        self.streams: dict[str, ApiStream] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._reaper, name="streamer-api-reaper", daemon=True).start()

    def _reaper(self) -> None:
        """Free streams nobody has read or steered for IDLE_SECONDS, and ended ones, every half minute."""
        while not self._closed.wait(30):
            with self._lock:
                self._reap()

    # ---- helpers ----------------------------------------------------------------------------------
    def _authorized(self, header: str | None, query: str | None) -> bool:
        if not self.token:
            return True
        given = query or (header[7:] if header and header.lower().startswith("bearer ") else "")
        return secrets.compare_digest(given.encode(), self.token.encode())

    def _check(self, request: Request) -> None:
        if not self._authorized(request.headers.get("authorization"), None):
            _fail(401, "this server needs its token: send Authorization: Bearer <token>")

    def _stream(self, sid: str) -> ApiStream:
        st = self.streams.get(sid) if isinstance(sid, str) else None
        if st is None:
            _fail(404, "no such session (ended, freed after being idle, or never created)")
        st.seen = time.monotonic()
        return st

    def _reap(self) -> None:
        now = time.monotonic()
        for sid, st in list(self.streams.items()):
            if not st.reader and now - st.seen > IDLE_SECONDS or st.job.state == "done":
                self.streams.pop(sid, None)
                st.close()

    @staticmethod
    async def _body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            _fail(413, f"request body is {len(raw)} bytes (at most {MAX_BODY})")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            _fail(400, "request body must be a JSON object")
        if not isinstance(body, dict):
            _fail(400, "request body must be a JSON object")
        return body

    def _tracks(self, data, session_or_size, fps: float):
        if data is None:
            return None
        w, h = session_or_size
        try:
            return from_json(data, width=w, height=h, fps=fps)
        except StreamerError as e:
            _fail(400, f"tracks: {e}")
        except Exception:  # noqa: BLE001 - any other shape of garbage
            _fail(400, "tracks must be the project's trajectory JSON or an ATI-style point list")

    @staticmethod
    def _image(data) -> StartImage:
        """The `image` field (base64 of a PNG/JPEG/WebP file, or a data: URL) -> the picture at its own
        size, read as `generate --image` reads a file. Raises InputError, one line naming the field."""
        if not isinstance(data, str):
            raise InputError("image must be a base64 string of a PNG, JPEG or WebP file (or a data: URL)")
        text = data.strip()
        if text.startswith("data:"):  # data:image/png;base64,....
            head, comma, text = text.partition(",")
            if not comma or not head.endswith(";base64"):
                raise InputError("image: a data: URL must be base64 (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("image must be a base64 string of a PNG, JPEG or WebP file (or a data: URL)") from None
        with tempfile.TemporaryDirectory(prefix="streamer-image-") as tmp:  # read_image's checks work on files
            path = Path(tmp) / "upload"
            path.write_bytes(raw)
            try:
                picture = read_image(path, what="image")
            except StreamerError as e:  # the server's temp path is no business of the client's
                raise InputError(_unpath(str(e), path)) from None
        picture.notes = [_unpath(n, path) for n in picture.notes]
        picture.name = "image"
        return picture

    # ---- the work --------------------------------------------------------------------------------
    def create(self, body: dict) -> dict:
        unknown = set(body) - FIELDS
        if unknown:
            _fail(400, f"unknown field {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(FIELDS))})")
        with self._lock:
            self._reap()
            if len(self.streams) >= MAX_SESSIONS:
                _fail(429, f"{MAX_SESSIONS} API sessions are open on this server; delete one first")
        try:
            prompt = params.prompt_text(body.get("prompt"))
            model = body.get("model") or self.app.default_model
            if model not in self.app.models.choices:
                raise params.InputError(f"unknown model {str(model)[:60]!r} (choose from {', '.join(self.app.models.choices)})")
            size = params.size(body.get("size"))
            seed = params.whole("seed", body.get("seed", 0), 0, params.SEED_MAX)
            steps = (params.whole("steps", body["steps"], 1, params.STEPS_MAX)
                     if body.get("steps") is not None else None)  # None: the model's own
            guidance = (params.number("guidance", body["guidance"], 0.0, params.GUIDANCE_MAX)
                        if body.get("guidance") is not None else None)  # None: the model's own
            anchor = body.get("drift_anchor")  # None: the model's own
            if anchor is not None and not isinstance(anchor, bool):
                raise params.InputError(f"drift_anchor must be true or false; got {str(anchor)[:40]!r}")
            # read before a device is chosen or a model loaded: a bad picture costs nothing
            image = self._image(body["image"]) if body.get("image") is not None else None
            sched, device = self.app.place()
            pipe = sched.call(self.app.models.get, model, device)
            size = size or self.app.frame_size(pipe)
            latent_size(pipe, *size)
            policy = body.get("policy") or (pipe.stream_defaults or {}).get("policy", "window")
            # knobs named for the model's own policy change those knobs and keep its others
            given = params.knobs(policy, body.get("policy_args"), check=False)
            knobs = params.knobs(policy, pipe.knobs_over_own(policy, given))
            tracks = self._tracks(body.get("tracks"), size, pipe.fps)
            notes = _prompt_notes(pipe, prompt)
            if image is not None:  # the size rule, and what was converted or resized, said in `notes`
                notes += (image := fit_start_image(image, *size)).notes
                tracks = _tracks_on_image(tracks, image, size, notes)
            config = pipe.stream_config(size=size, policy=policy, policy_args=knobs, steps=steps, seed=seed,
                                        guidance=guidance, drift_anchor=anchor)
            session = sched.call(partial(_open, pipe, prompt, config, tracks, image, device))
        except ResourceError as e:
            _fail(413, str(e))
        except HTTPException:
            raise
        except ValueError as e:  # StreamerError, PolicyError, model load failures: one line each
            _fail(400, str(e))
        st = ApiStream(session, sched, device)
        with self._lock:
            self.streams[st.id] = st
        position = sched.submit(st.job)
        cfg = session.config
        return {"id": st.id, "position": position, "device": device or str(pipe.device), "width": cfg.width,
                "height": cfg.height, "fps": pipe.fps, "chunk_frames": cfg.chunk_frames,
                "policy": cfg.policy, "policy_args": cfg.policy_args, "drift_anchor": cfg.drift_anchor, "notes": notes}

    def status(self, st: ApiStream) -> dict:
        return {"position": st.sched.position(st.job), "chunks": st.job.chunks, "frames": st.frames,
                "paused": st.job.paused, "prompt": st.session.prompt,
                "error": str(st.job.error) if st.job.error else None}

    def control(self, st: ApiStream, body: dict) -> dict:
        unknown = set(body) - {"prompt", "tracks", "action"}
        if unknown:
            _fail(400, f"unknown field {sorted(unknown)[0]!r} (allowed: action, prompt, tracks)")
        action = body.get("action")
        if action not in (None, "pause", "resume", "stop"):
            _fail(400, f"action must be pause, resume or stop; got {str(action)[:40]!r}")
        try:
            applies = st.session.applies_from()  # (chunk, video frame): exact, a chunk in the making included
            notes: list[str] = []
            if "prompt" in body:
                prompt = params.prompt_text(body["prompt"])
                notes += _prompt_notes(st.session.pipe, prompt)
                applies = st.session.set_prompt(prompt)
            if "tracks" in body:
                cfg = st.session.config
                tracks = self._tracks(body["tracks"], (cfg.width, cfg.height), st.session.pipe.fps)
                start = st.session.applies_from()[1]
                if tracks is not None and not tracks.loop and not tracks.visible[start:].any():
                    _fail(400, f"tracks: no point is visible from video frame {start} on, where "
                               "they would apply: a track's frame 0 is the stream's first frame (the reply's "
                               "applies_from_frame)")
                applies = st.session.set_tracks(tracks)
        except HTTPException:
            raise
        except ValueError as e:
            _fail(400, str(e))
        if action in ("pause", "resume"):
            st.sched.pause(st.job, action == "pause")
        elif action == "stop":
            with self._lock:
                self.streams.pop(st.id, None)
            st.close()
        return {"ok": True, "applies_from_chunk": applies[0], "applies_from_frame": applies[1], "notes": notes}

    def recording(self, st: ApiStream) -> FileResponse:
        src = st.workdir / "recording.mp4"
        with st.lock:
            held = st.writer.frames_on_disk if st.writer is not None else st.frames  # the newest waits in the muxer
            if held == 0 or not src.exists():
                _fail(409, "nothing recorded yet: read some frames first (the newest frame reaches the file "
                           "when the next is made)")
            out = Path(tempfile.mkdtemp(prefix="streamer-rec-")) / f"streamer-{held}-frames.mp4"
            shutil.copyfile(src, out)
        return FileResponse(out, media_type="video/mp4", filename=out.name,
                            background=BackgroundTask(shutil.rmtree, out.parent, True))

    async def frames(self, ws: WebSocket, sid: str) -> None:
        if not self._authorized(ws.headers.get("authorization"), ws.query_params.get("token")):
            await ws.close(code=4401, reason="this server needs its token")
            return
        st = self.streams.get(sid)
        if st is None:
            await ws.close(code=4404, reason="no such session")
            return
        fmt = ws.query_params.get("format", "jpeg")
        if fmt not in ("jpeg", "rgb"):
            await ws.close(code=4400, reason="format must be jpeg or rgb")
            return
        if st.reader:
            await ws.close(code=4409, reason="this session already has a reader")
            return
        st.reader = True
        await ws.accept()
        last_pos, arrivals = None, []
        try:
            while True:
                pos = st.sched.position(st.job)
                if pos > 0 and pos != last_pos:
                    await ws.send_text(json.dumps({"type": "queued", "position": pos}))
                last_pos = pos
                item = await asyncio.to_thread(st.job.get, 0.5)
                st.seen = time.monotonic()
                if item is None:
                    continue
                if item is DONE:
                    await ws.send_text(json.dumps({"type": "end", "error": str(st.job.error) if st.job.error else None}))
                    await ws.close()
                    return
                chunk: StreamChunk = item
                arrivals = (arrivals + [(time.perf_counter(), len(chunk.frames))])[-6:]
                span = arrivals[-1][0] - arrivals[0][0]
                gen = sum(n for _, n in arrivals[1:]) / span if span > 0 else \
                    len(chunk.frames) / max(chunk.dit_seconds + chunk.decode_seconds, 1e-9)
                h, w = chunk.frames.shape[1:3]
                await ws.send_text(json.dumps({
                    "type": "chunk", "index": chunk.index, "first_frame": chunk.first_video_frame,
                    "frames": len(chunk.frames), "width": w, "height": h, "format": fmt,
                    "dit_ms": round(chunk.dit_seconds * 1e3, 1), "decode_ms": round(chunk.decode_seconds * 1e3, 1),
                    "generated_fps": round(gen, 2), "prompt": chunk.prompt}))
                for frame in chunk.frames:
                    await ws.send_bytes(await asyncio.to_thread(encode, frame, fmt))
        except WebSocketDisconnect:
            pass
        finally:
            st.reader = False
            st.seen = time.monotonic()

    # ---- routes ----------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        r = APIRouter(prefix="/api")

        @r.post("/sessions")
        async def create(request: Request):
            self._check(request)
            body = await self._body(request)
            return JSONResponse(await asyncio.to_thread(self.create, body), status_code=201)

        @r.get("/sessions/{sid}")
        def status(sid: str, request: Request):
            self._check(request)
            return self.status(self._stream(sid))

        @r.post("/sessions/{sid}/control")
        async def control(sid: str, request: Request):
            self._check(request)
            st = self._stream(sid)
            return await asyncio.to_thread(self.control, st, await self._body(request))

        @r.get("/sessions/{sid}/recording.mp4")
        def recording(sid: str, request: Request):
            self._check(request)
            return self.recording(self._stream(sid))

        @r.delete("/sessions/{sid}")
        def delete(sid: str, request: Request):
            self._check(request)
            st = self._stream(sid)
            with self._lock:
                self.streams.pop(sid, None)
            st.close()
            return {"ok": True}

        @r.websocket("/sessions/{sid}/frames")
        async def frames(ws: WebSocket, sid: str):
            await self.frames(ws, sid)

        return r

    def close(self) -> None:
        self._closed.set()
        for st in list(self.streams.values()):
            st.close()
        self.streams.clear()


def make_server(demo, token: str | None = None):
    """A FastAPI app serving the page (`demo`, from build_app) at / and the API at /api."""
    import gradio as gr
    from fastapi import FastAPI

    api = Api(demo.streamer, token)
    server = FastAPI(title="streamer", docs_url=None, redoc_url=None, openapi_url=None)
    server.include_router(api.router())
    server.state.api = api
    return gr.mount_gradio_app(server, demo, path="/")
