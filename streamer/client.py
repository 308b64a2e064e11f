"""A small client of `streamer serve`'s streaming API (ui/api.py): create a stream, steer it, read its
frames, save its recording. Needs only the standard library and `websockets` (and Pillow for JPEG).

    from streamer.client import Client

    stream = Client("http://127.0.0.1:7860").create("a red circle on sand", size=(128, 128), seed=1)
    for stats, frames in stream.frames():          # frames: uint8 [H, W, 3] arrays, one chunk at a time
        print(stats["index"], stats["generated_fps"], len(frames))
        if stats["index"] == 3:
            stream.set_prompt("a blue square on grass")
        if stats["index"] == 8:
            break
    stream.save_recording("out.mp4")
    stream.stop()

Errors of the server (a bad field, a stream that cannot fit memory) raise StreamerError with the
server's one-line message.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamer.errors import StreamerError


class Client:
    """`url`: the server's base address; `token`: the server's --token, if it has one."""

    def __init__(self, url: str = "http://127.0.0.1:7860", token: str | None = None, timeout: float = 120.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def request(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("detail", "")
            except ValueError:
                detail = ""
            raise StreamerError(f"{method} {path}: {e.code} {detail or e.reason}") from None
        except urllib.error.URLError as e:
            raise StreamerError(f"cannot reach {self.url}: {e.reason}") from None

    def create(self, prompt: str, *, model: str | None = None, policy: str | None = None,
               policy_args: dict | None = None, size: tuple[int, int] | None = None, seed: int = 0,
               steps: int | None = None, tracks: dict | list | None = None,
               image: str | Path | bytes | None = None, drift_anchor: bool | None = None) -> Stream:
        """Open a stream (it may wait in line: see `Stream.info['position']`). `tracks`: the project's
        trajectory JSON (or an ATI-style point list) in pixels of the stream's frame (or of `image`,
        when they give its width and height). `image`: a start picture (a PNG/JPEG/WebP path, or the
        file's bytes); the stream's first frame is that picture, and `Stream.info['notes']` says what
        was converted or resized. `steps`: denoising steps, `drift_anchor`: hold a still background's
        level (`streamer.anchor`); None: the model's own."""
        body = {"prompt": prompt, "seed": seed}
        if image is not None:
            import base64

            try:
                data = image if isinstance(image, bytes) else Path(image).read_bytes()
            except OSError as e:
                raise StreamerError(f"image {image}: cannot read ({e.strerror or e})") from None
            body["image"] = base64.b64encode(data).decode()
        for k, v in (("model", model), ("policy", policy), ("policy_args", policy_args), ("steps", steps),
                     ("tracks", tracks), ("drift_anchor", drift_anchor)):
            if v is not None:
                body[k] = v
        if size is not None:
            body["size"] = list(size)
        return Stream(self, json.loads(self.request("POST", "/api/sessions", body)))


class Stream:
    """One stream on the server. `info`: id, position, device, width, height, fps, chunk_frames."""

    def __init__(self, client: Client, info: dict):
        self.client, self.info, self.id = client, info, info["id"]

    def frames(self, format: str = "jpeg") -> Iterator[tuple[dict, list[np.ndarray]]]:
        """(stats, frames) per chunk: stats as the server sends them (index, first_frame, dit_ms,
        decode_ms, generated_fps, prompt, ...), frames uint8 [H, W, 3]. Ends when the stream ends."""
        from websockets.sync.client import connect

        ws_url = self.client.url.replace("http", "ws", 1) + f"/api/sessions/{self.id}/frames?format={format}"
        if self.client.token:
            ws_url += f"&token={self.client.token}"
        with connect(ws_url, max_size=None, open_timeout=self.client.timeout) as ws:
            while True:
                head = json.loads(ws.recv())
                if head["type"] == "end":
                    if head.get("error"):
                        raise StreamerError(f"the stream ended: {head['error']}")
                    return
                if head["type"] != "chunk":
                    continue  # {"type": "queued", "position": k}
                frames = [self._decode(ws.recv(), head) for _ in range(head["frames"])]
                yield head, frames

    @staticmethod
    def _decode(data: bytes, head: dict) -> np.ndarray:
        if head["format"] == "rgb":
            return np.frombuffer(data, np.uint8).reshape(head["height"], head["width"], 3)
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def control(self, **body) -> dict:
        return json.loads(self.client.request("POST", f"/api/sessions/{self.id}/control", body))

    def set_prompt(self, prompt: str) -> dict:
        return self.control(prompt=prompt)

    def set_tracks(self, tracks: dict | list | None) -> dict:
        return self.control(tracks=tracks)

    def pause(self) -> dict:
        return self.control(action="pause")

    def resume(self) -> dict:
        return self.control(action="resume")

    def stop(self) -> dict:
        return self.control(action="stop")

    def status(self) -> dict:
        return json.loads(self.client.request("GET", f"/api/sessions/{self.id}"))

    def save_recording(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.client.request("GET", f"/api/sessions/{self.id}/recording.mp4"))
        return path
