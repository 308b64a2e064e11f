"""Soak test of `streamer serve` (not in CI): N API clients stream at once for M minutes.

Starts `streamer serve` as a child process, opens N streams through streamer.client, plays each
one's frames with the page's pacing (streamer.scheduler.Pacer) and reports the server's RSS at
start (after every stream's first chunk) and end, frames per stream, and freezes (shown-frame gaps
over 400 ms) with the shown-frame interval mean and p95.

    python scripts/soak.py --sessions 3 --minutes 10 [--size 128x128] [--model default] [--port 7950]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque

import numpy as np

from streamer import checks
from streamer.client import Client
from streamer.scheduler import Pacer


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_up(port: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def play(client: Client, i: int, args, stop: threading.Event, first: threading.Barrier, out: dict) -> None:
    stream = client.create(f"a red circle on a sand background {i}", model=args.model, size=args.size_wh, seed=i)
    buf: deque = deque()
    pacer = Pacer(stream.info["fps"], stream.info["chunk_frames"] * 4)
    shown: list[float] = []
    done = threading.Event()

    def read():
        try:
            for k, (stats, frames) in enumerate(stream.frames()):
                pacer.arrived(len(frames))
                buf.extend(frames)
                if k == 0:
                    first.wait()
                if stop.is_set():
                    break
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    due = 0.0
    while not (stop.is_set() or done.is_set()):
        now = time.perf_counter()
        if buf and now >= due:
            buf.popleft()
            interval = pacer.interval(len(buf))
            due = due + interval if due > now - interval else now + interval
            shown.append(now)
        else:
            time.sleep(min(0.005, max(0.0, due - now)) if buf else 0.005)
    stream.stop()
    gaps = np.diff(shown[1:]) if len(shown) > 2 else np.zeros(1)  # from the first shown frame on
    at = [round(shown[k + 2] - shown[1], 1) for k in np.flatnonzero(gaps > 0.4)]
    out[i] = dict(frames=len(shown), freezes=int((gaps > 0.4).sum()), at=at[:8], mean_ms=1e3 * gaps.mean(),
                  p95_ms=1e3 * np.percentile(gaps, 95), max_ms=1e3 * gaps.max(), gen_fps=pacer.generated_fps())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=checks.int_in(1, 64), default=3, help="API streams at once (default 3)")
    p.add_argument("--minutes", type=checks.non_negative_float, default=10, help="how long they stream (default 10)")
    p.add_argument("--size", type=checks.video_size, default="128x128", help="WxH of every stream (default 128x128)")
    p.add_argument("--model", default="default", help="model label of `streamer serve` (default: default)")
    p.add_argument("--port", type=checks.int_in(1, 65535), default=7950, help="port of the server it starts (default 7950)")
    args = p.parse_args()
    if args.minutes == 0:
        p.error("argument --minutes: must be > 0")
    args.size_wh = args.size
    args.size = "x".join(map(str, args.size_wh))
    server = subprocess.Popen([sys.executable, "-m", "streamer", "serve", "--port", str(args.port), "--size", args.size],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(args.port)
        client = Client(f"http://127.0.0.1:{args.port}", timeout=600)
        stop = threading.Event()
        start_rss: list[float] = []
        first = threading.Barrier(args.sessions + 1)
        out: dict = {}
        players = [threading.Thread(target=play, args=(client, i, args, stop, first, out)) for i in range(args.sessions)]
        for t in players:
            t.start()
        first.wait(timeout=600)
        start_rss.append(rss_mb(server.pid))
        t0 = time.monotonic()
        print(f"{args.sessions} streams running; server RSS {start_rss[0]:.0f} MB", flush=True)
        time.sleep(args.minutes * 60)
        end_rss = rss_mb(server.pid)
        stop.set()
        for t in players:
            t.join(120)
        print(f"{args.sessions} sessions x {(time.monotonic() - t0) / 60:.1f} min, {args.model} at {args.size}, "
              f"{os.cpu_count()} CPUs; server RSS {start_rss[0]:.0f} MB at start, {end_rss:.0f} MB at end")
        print("| session | frames shown | generated FPS | shown interval mean / p95 / max ms | freezes > 400 ms (at s) |")
        print("|---|---|---|---|---|")
        for i, r in sorted(out.items()):
            print(f"| {i} | {r['frames']} | {r['gen_fps']:.1f} | {r['mean_ms']:.0f} / {r['p95_ms']:.0f} / {r['max_ms']:.0f} "
                  f"| {r['freezes']} ({', '.join(map(str, r['at']))}) |")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
