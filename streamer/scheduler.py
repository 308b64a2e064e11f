"""Live streams sharing devices: one compute thread per device steps its sessions in turn, one chunk
each (round-robin), and frames reach each reader at an even pace.

    Scheduler   one device: at most `max_live` streams advance, the rest wait in line (an honest
                position, no time estimate). A stream runs only while its reader has room for its
                next chunk (`ahead` finished chunks at most), so a paused or slow reader costs no
                compute and every other stream gets its turn sooner. Model work that is not a chunk
                (opening a session: text encoding, cache allocation) runs on the same thread via
                `call`, between chunks, so one device never runs two forwards at once.
    Placer      several devices: a new stream goes to the one with the most free memory (ties: the
                fewest streams), one Scheduler each.
    Pacer       frames out at the video's fps while generation keeps up, else evenly at the
                generated rate, from a buffer of about one chunk.

Batching several sessions into one forward is not done: sessions differ in cache fill, policy and
prompt timing, so stacking them needs a batched CacheView (a change in streamer/cache.py).
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

DONE = object()  # put in a job's queue when it ends (stopped or failed)


@dataclass
class Job:
    """One live stream as the scheduler sees it. `step()` makes its next chunk (any object) on the
    compute thread; finished chunks wait in `out` for the reader (`get`)."""

    step: Callable[[], Any]
    ahead: int = 1                       # finished chunks it may hold before its reader takes them
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    out: queue.Queue = field(default_factory=queue.Queue)
    paused: bool = False
    state: str = "new"                   # new | queued | live | done
    error: BaseException | None = None   # what ended it, if a step failed
    chunks: int = 0                      # chunks made
    busy_seconds: float = 0.0            # compute time of its chunks
    scheduler: Scheduler | None = None

    def get(self, timeout: float | None = None) -> Any:
        """The next finished chunk; None when none came within `timeout` s; DONE when it ended."""
        try:
            item = self.out.get(timeout=timeout)
        except queue.Empty:
            return None
        if self.scheduler is not None:
            self.scheduler.wake()  # it has room again: it may take its next turn
        return item


class Scheduler:
    """Round-robin over live jobs on one compute thread. Thread-safe; `name` names the thread."""

    def __init__(self, max_live: int = 4, name: str = "cpu", start: bool = True):
        if max_live < 1:
            raise ValueError(f"max_live={max_live} must be >= 1")
        self.max_live, self.name = max_live, name
        self._cv = threading.Condition()
        self._live: list[Job] = []
        self._line: list[Job] = []       # waiting for a live slot, first come first served
        self._calls: deque[tuple[Callable, tuple, Future]] = deque()
        self._turn = 0                   # index into _live of the job whose turn comes next
        self._closed = False
        self.history: deque[str] = deque(maxlen=1000)  # ids of the last chunks made, in order (tests, stats)
        self._thread = threading.Thread(target=self._loop, name=f"streamer-{name}", daemon=True)
        if start:
            self._thread.start()

    # ---- membership -----------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Add a job: live at once when a slot is free, else in line. Returns its position (0: live)."""
        with self._cv:
            job.scheduler = self
            if len(self._live) < self.max_live:
                job.state = "live"
                self._live.append(job)
            else:
                job.state = "queued"
                self._line.append(job)
            self._cv.notify_all()
            return self._position(job)

    def remove(self, job: Job) -> None:
        """End a job (stop, tab closed): its slot goes to the first in line. A chunk being made for
        it finishes and is dropped."""
        with self._cv:
            if job in self._live:
                i = self._live.index(job)
                self._live.pop(i)
                if i < self._turn:
                    self._turn -= 1
            elif job in self._line:
                self._line.remove(job)
            if job.state != "done":
                job.state = "done"
                job.out.put(DONE)
            while self._line and len(self._live) < self.max_live:
                nxt = self._line.pop(0)
                nxt.state = "live"
                self._live.append(nxt)
            self._cv.notify_all()

    def _position(self, job: Job) -> int:
        if job in self._live:
            return 0
        if job in self._line:
            return self._line.index(job) + 1
        return -1

    def position(self, job: Job) -> int:
        """0: live; k >= 1: k-th in line; -1: not here (ended)."""
        with self._cv:
            return self._position(job)

    def counts(self) -> tuple[int, int]:
        """(live streams, streams in line)."""
        with self._cv:
            return len(self._live), len(self._line)

    def pause(self, job: Job, paused: bool = True) -> None:
        """A paused job keeps its slot (its memory stays allocated) but takes no turns."""
        with self._cv:
            job.paused = paused
            self._cv.notify_all()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def call(self, fn: Callable, *args, timeout: float | None = None) -> Any:
        """Run fn(*args) on the compute thread between two chunks and return its result (or raise)."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._calls.append((fn, args, fut))
            self._cv.notify_all()
        return fut.result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the compute thread after the chunk it is making (so no model call outlives the caller)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the compute thread ---------------------------------------------------------------------
    def _runnable(self, job: Job) -> bool:
        return not job.paused and job.out.qsize() < job.ahead

    def _next(self) -> Job | None:
        """The next live job in round-robin order that can run (its reader has room), or None."""
        n = len(self._live)
        for k in range(n):
            i = (self._turn + k) % n
            if self._runnable(self._live[i]):
                self._turn = (i + 1) % n
                return self._live[i]
        return None

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._calls and (job := self._next()) is None:
                    self._cv.wait(0.5)
                if self._closed:
                    for _, _, fut in self._calls:
                        fut.set_exception(RuntimeError("the scheduler is closed"))
                    return
                call = self._calls.popleft() if self._calls else None
            if call is not None:
                fn, args, fut = call
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(e)
                continue
            t0 = time.perf_counter()
            try:
                chunk = job.step()
            except Exception as e:  # a failing stream ends itself only; the others go on
                job.error = e
                self.remove(job)
                continue
            job.busy_seconds += time.perf_counter() - t0
            job.chunks += 1
            with self._cv:
                self.history.append(job.id)
                if job.state == "live":  # stopped while its chunk was made: drop the chunk
                    job.out.put(chunk)


class Placer:
    """One Scheduler per device; new streams go to the device with the most free memory.
    `free`: device -> free bytes (default streamer.memory.free_bytes; None counts as 0)."""

    def __init__(self, devices: list[str], max_live: int = 4, free: Callable[[str], int | None] | None = None):
        if not devices:
            raise ValueError("at least one device is needed")
        self.devices = list(devices)
        self.schedulers = [Scheduler(max_live, name=f"{d}#{i}") for i, d in enumerate(devices)]
        if free is None:
            from streamer.memory import free_bytes as free
        self._free = free

    def pick(self) -> int:
        """Index of the device for a new stream: most free memory, then fewest streams, then first."""
        free = {d: self._free(d) or 0 for d in set(self.devices)}  # one reading per device: "cpu", "cpu" tie
        def key(i: int):
            live, line = self.schedulers[i].counts()
            return (-free[self.devices[i]], live + line, i)
        return min(range(len(self.devices)), key=key)

    def close(self) -> None:
        for s in self.schedulers:
            s.close()


class Pacer:
    """When to show the next frame. Frames arrive in chunks (`arrived`); they leave one at a time,
    `interval()` apart: 1/fps while generation keeps up, else the generated frame period, stretched
    a little while the buffer is under one chunk and shrunk (never below 1/fps) while it is over, so
    the buffer stays near one chunk and playback stays even instead of bursting and freezing."""

    def __init__(self, fps: float, chunk_frames: int = 12):
        self.fps, self.chunk = fps, max(1, chunk_frames)
        self.arrivals: deque[tuple[float, int]] = deque(maxlen=6)   # (time, frames)
        self.shown: deque[float] = deque(maxlen=max(2, int(2 * fps)))
        self._last: float | None = None

    def arrived(self, frames: int, now: float | None = None) -> None:
        self.chunk = max(self.chunk, frames)
        self.arrivals.append((time.perf_counter() if now is None else now, frames))

    def generated_fps(self) -> float:
        """Frames per second this stream is being made at (its share of the device), 0 if unknown."""
        if len(self.arrivals) < 2:
            return 0.0
        span = self.arrivals[-1][0] - self.arrivals[0][0]
        return sum(n for _, n in list(self.arrivals)[1:]) / span if span > 0 else 0.0

    def interval(self, buffered: int) -> float:
        base = 1.0 / self.fps
        gen = self.generated_fps()
        if gen > 0:
            base = max(base, 1.0 / gen)
        # proportional to how far the buffer is from one chunk: 0 frames -> x1.5, 1.5+ chunks -> x0.75
        scale = min(1.5, max(0.75, 1.0 + 0.5 * (self.chunk - buffered) / self.chunk))
        target = max(1.0 / self.fps, base * scale)
        # low-passed: a chunk landing in the buffer must not turn into a sudden burst of short intervals
        self._last = target if self._last is None else max(1.0 / self.fps, 0.8 * self._last + 0.2 * target)
        return self._last

    def showed(self, now: float | None = None) -> None:
        self.shown.append(time.perf_counter() if now is None else now)

    def shown_fps(self) -> float:
        if len(self.shown) < 2:
            return 0.0
        span = self.shown[-1] - self.shown[0]
        return (len(self.shown) - 1) / span if span > 0 else 0.0
