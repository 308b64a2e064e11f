"""The live-stream scheduler without a model: round-robin order, the live limit and the line,
readers that fall behind, failures, device placement and frame pacing."""

from __future__ import annotations

import threading
import time

import pytest

from streamer.scheduler import DONE, Job, Pacer, Placer, Scheduler


def _job(name: str, log: list, ahead: int = 100, delay: float = 0.0) -> Job:
    def step():
        if delay:
            time.sleep(delay)
        log.append(name)
        return name
    return Job(step, ahead=ahead, id=name)


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_round_robin_one_chunk_each():
    s = Scheduler(max_live=3, start=False)
    log: list[str] = []
    for name in "abc":
        s.submit(_job(name, log))
    s._thread.start()
    _wait(lambda: len(log) >= 9)
    s.close()
    assert log[:9] == list("abcabcabc")


def test_live_limit_and_honest_line_positions():
    s = Scheduler(max_live=2, start=False)
    log: list[str] = []
    jobs = {n: _job(n, log, ahead=1) for n in "abcd"}
    assert [s.submit(jobs[n]) for n in "abcd"] == [0, 0, 1, 2]
    assert s.counts() == (2, 2) and jobs["c"].state == "queued"
    s._thread.start()
    _wait(lambda: jobs["a"].out.qsize() == 1 and jobs["b"].out.qsize() == 1)
    time.sleep(0.05)
    assert set(log) == {"a", "b"}  # c and d wait: no chunk made for them
    s.remove(jobs["a"])            # a's slot goes to c, d moves up
    assert s.position(jobs["c"]) == 0 and s.position(jobs["d"]) == 1 and s.position(jobs["a"]) == -1
    assert jobs["a"].get(0.1) == "a" and jobs["a"].get(0.1) is DONE
    s.remove(jobs["d"])            # leaving the line
    assert s.counts() == (2, 0)
    _wait(lambda: "c" in log)
    s.close()


def test_a_reader_that_does_not_read_takes_no_turns():
    s = Scheduler(max_live=2)
    log: list[str] = []
    slow, fast = _job("slow", log, ahead=1), _job("fast", log, ahead=1)
    s.submit(slow)
    s.submit(fast)
    for _ in range(5):  # only fast's reader reads
        assert fast.get(2.0) == "fast"
    assert log.count("slow") == 1 and log.count("fast") >= 5
    s.pause(fast)
    time.sleep(0.05)
    n = len(log)
    time.sleep(0.1)
    assert fast.get(0.1) in ("fast", None) and len(log) <= n + 1  # paused: at most the chunk under way
    s.close()


def test_a_failing_stream_ends_alone_and_calls_run_between_chunks():
    s = Scheduler(max_live=2)
    log: list[str] = []

    def boom():
        raise RuntimeError("out of memory")
    bad, good = Job(boom, id="bad"), _job("good", log, ahead=1)
    s.submit(bad)
    s.submit(good)
    assert bad.get(2.0) is DONE and "out of memory" in str(bad.error)
    assert good.get(2.0) == "good"
    assert s.call(lambda x: threading.current_thread().name + x, "!") == "streamer-cpu!"
    with pytest.raises(ZeroDivisionError):
        s.call(lambda: 1 / 0)
    s.close()


def test_ids_are_unguessable():
    ids = {Job(lambda: None).id for _ in range(100)}
    assert len(ids) == 100 and all(len(i) >= 20 for i in ids)


def test_placement_most_free_memory_then_fewest_streams():
    free = {"cuda:0": 10, "cuda:1": 30}
    p = Placer(["cuda:0", "cuda:1"], max_live=4, free=free.get)
    assert p.pick() == 1
    free["cuda:0"] = 50
    assert p.pick() == 0
    p.close()
    same = Placer(["cpu", "cpu"], max_live=4, free=lambda d: 100)  # two CPU "devices": fewest streams wins
    picks = []
    for _ in range(4):
        i = same.pick()
        picks.append(i)
        same.schedulers[i].submit(Job(lambda: None, ahead=0))
    assert picks == [0, 1, 0, 1]
    same.close()


def test_pacer_plays_at_fps_when_generation_keeps_up_and_evenly_when_not():
    fast = Pacer(16.0, chunk_frames=12)
    for k in range(4):
        fast.arrived(12, now=k * 0.5)        # 24 frames/s made: faster than 16 fps
    assert fast.interval(12) == pytest.approx(1 / 16)
    assert fast.interval(30) == pytest.approx(1 / 16)  # never faster than the video's fps
    def slow():
        p = Pacer(16.0, chunk_frames=12)
        for k in range(4):
            p.arrived(12, now=k * 2.0)       # 6 frames/s made
        return p
    assert slow().generated_fps() == pytest.approx(6.0)
    assert slow().interval(12) == pytest.approx(1 / 6)  # one chunk buffered: the generated rate
    assert slow().interval(2) > 1 / 6 > slow().interval(20) >= 1 / 16
    p = slow()
    steps = [p.interval(12)] + [p.interval(24) for _ in range(3)]  # a chunk lands: eased in, no burst
    assert steps[0] > steps[1] > steps[2] > steps[3] > 0.75 / 6
