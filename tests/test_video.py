"""Mp4Writer: browser-playable H.264, and a playable file after SIGKILL / Ctrl-C."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from streamer.video import Mp4Writer, partial_path, probe_mp4

H, W = 48, 64


def gradient(start: int, n: int) -> np.ndarray:
    """Frames start..start+n-1 of a gradient that moves from frame to frame, uint8 [n, H, W, 3]."""
    y, x = np.mgrid[0:H, 0:W]
    i = np.arange(start, start + n)[:, None, None]
    return np.stack([(x * 4 + i * 8) % 256, (y * 5 + i * 3) % 256, np.full_like(i * x, 128)], -1).astype(np.uint8)


def top_level_boxes(path: Path) -> list[str]:
    data, boxes, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size < 8:
            break
        pos += size
    return boxes


def spawn(body: str, path: Path) -> subprocess.Popen:
    # The child gets the same gradient() by its source text.
    prelude = f"import numpy as np\nH, W = {H}, {W}\n" + inspect.getsource(gradient)
    script = prelude + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def read_until(proc: subprocess.Popen, frames: int) -> int:
    """Read the child's per-write frame counts until at least `frames` are reported."""
    for line in proc.stdout:
        if int(line) >= frames:
            return int(line)
    raise AssertionError(f"child exited early with code {proc.wait()}")


@pytest.mark.parametrize("low_delay", [True, False])
def test_write_and_probe(tmp_path, low_delay):
    path = tmp_path / "clip.mp4"
    frames = gradient(0, 30)
    with Mp4Writer(path, 16, W, H, low_delay=low_delay) as writer:
        writer.write(frames[:12])
        writer.write(frames[12:])
        assert writer.frames_written == 30
    info = probe_mp4(path)
    assert info == dict(frames=30, width=W, height=H, fps=16.0, codec="h264", pix_fmt="yuv420p")
    assert top_level_boxes(path)[-1] == "mfra"  # the fragmented file got its normal trailer

    import av

    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.abs(decoded.astype(int) - frames).mean() < 8  # colours survive: BT.709 both ways


@pytest.mark.parametrize("size", [(63, 48), (64, 47)])
def test_odd_size_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match=f"even width and height, got {size[0]}x{size[1]}"):
        Mp4Writer(tmp_path / "odd.mp4", 16, *size)


def test_wrong_frame_shape_is_refused(tmp_path):
    with Mp4Writer(tmp_path / "clip.mp4", 16, W, H) as writer:
        with pytest.raises(ValueError, match=r"expected uint8 frames \[N, 48, 64, 3\]"):
            writer.write(np.zeros((2, H, W + 2, 3), np.uint8))


def test_atomic_renames_only_when_complete(tmp_path):
    done, broken = tmp_path / "done.mp4", tmp_path / "broken.mp4"
    with Mp4Writer(done, 16, W, H, atomic=True) as writer:
        writer.write(gradient(0, 5))
        assert partial_path(done).exists() and not done.exists()
    assert done.exists() and not partial_path(done).exists()
    assert probe_mp4(done)["frames"] == 5

    with pytest.raises(RuntimeError):
        with Mp4Writer(broken, 16, W, H, atomic=True) as writer:
            writer.write(gradient(0, 5))
            raise RuntimeError("generation failed")
    assert not broken.exists()
    assert partial_path(broken).name == "broken.partial.mp4"
    assert probe_mp4(partial_path(broken))["frames"] == 5  # finalised, just not renamed


WRITE_FOREVER = """
import sys
from streamer.video import Mp4Writer
writer = Mp4Writer(sys.argv[1], 16, W, H)
while writer.frames_written < 5000:
    writer.write(gradient(writer.frames_written, 12))
    print(writer.frames_written, flush=True)
"""


def test_sigkill_mid_stream_leaves_playable_file(tmp_path):
    """Killed at an arbitrary moment: every frame reported written is there but the newest."""
    path = tmp_path / "killed.mp4"
    proc = spawn(WRITE_FOREVER, path)
    try:
        reported = read_until(proc, 36)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    info = probe_mp4(path)
    assert info["frames"] >= reported - 1
    assert (info["width"], info["height"], info["codec"]) == (W, H, "h264")


def test_sigkill_between_writes_loses_only_newest_frame(tmp_path):
    """Killed while idle after write() returned: exactly all frames but the newest one."""
    path = tmp_path / "killed.mp4"
    proc = spawn(
        """
        import sys
        from streamer.video import Mp4Writer
        writer = Mp4Writer(sys.argv[1], 16, W, H)
        for _ in range(3):
            writer.write(gradient(writer.frames_written, 12))
        print(writer.frames_written, flush=True)
        sys.stdin.readline()  # wait here to be killed
        """,
        path,
    )
    try:
        reported = read_until(proc, 36)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert reported == 36
    assert probe_mp4(path)["frames"] == 35
    assert "mfra" not in top_level_boxes(path)  # no trailer: it really was killed


def test_a_copy_taken_while_writing_holds_frames_on_disk(tmp_path):
    """A recording copied mid-stream (the page's and the API's download) holds exactly
    `frames_on_disk` frames: all written but the newest while open, all of them once closed."""
    import shutil

    path, copy = tmp_path / "live.mp4", tmp_path / "copy.mp4"
    writer = Mp4Writer(path, 16, W, H)
    assert writer.frames_on_disk == 0
    for n in (1, 12, 5):
        writer.write(gradient(writer.frames_written, n))
        shutil.copyfile(path, copy)
        assert probe_mp4(copy)["frames"] == writer.frames_on_disk == writer.frames_written - 1
    writer.close()
    assert probe_mp4(path)["frames"] == writer.frames_on_disk == 18


def test_ctrl_c_finalises_with_every_frame(tmp_path):
    path = tmp_path / "interrupted.mp4"
    proc = spawn(
        """
        import sys
        from streamer.video import Mp4Writer
        try:
            with Mp4Writer(sys.argv[1], 16, W, H) as writer:
                while writer.frames_written < 5000:
                    writer.write(gradient(writer.frames_written, 12))
                    print(writer.frames_written, flush=True)
        except KeyboardInterrupt:
            print(writer.frames_written, flush=True)
        """,
        path,
    )
    try:
        reported = read_until(proc, 36)
        proc.send_signal(signal.SIGINT)
        final = int(proc.stdout.readlines()[-1])
    finally:
        proc.kill()
        proc.wait()
    assert final >= reported
    assert probe_mp4(path)["frames"] == final
    assert top_level_boxes(path)[-1] == "mfra"


# ---- output errors (issue 14) -------------------------------------------------------------------
def test_full_disk_mid_run_keeps_what_was_written_and_says_so(tmp_path):
    import errno

    from streamer.errors import OutputError

    out = tmp_path / "full.mp4"
    writer = Mp4Writer(out, fps=16, width=64, height=64)
    real = writer._container

    class FillsUp:  # the disk fills while the 11th frame is muxed
        def __init__(self):
            self.calls = 0

        def mux(self, packets):
            self.calls += 1
            if self.calls > 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real.mux(packets)

        def close(self):
            real.close()

    writer._container = FillsUp()
    frames = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(OutputError, match="No space left on device.*keeps the 10 frames"):
        with writer:
            writer.write(frames)
    assert writer.frames_written == 10 and probe_mp4(out)["frames"] == 10


@pytest.mark.parametrize("where", ["folder", "parent is a file", "read-only"])
def test_unwritable_paths_are_one_line(tmp_path, where):
    from streamer.errors import OutputError

    (tmp_path / "file").write_text("x")
    path = {"folder": tmp_path, "parent is a file": tmp_path / "file" / "v.mp4",
            "read-only": Path("/proc/streamer-test.mp4")}[where]
    with pytest.raises(OutputError) as info:  # at open, or at the first write where the muxer opens late
        with Mp4Writer(path, fps=16, width=64, height=64) as writer:
            writer.write(np.zeros((2, 64, 64, 3), np.uint8))
    assert "\n" not in str(info.value) and str(path.parent if where != "folder" else path) in str(info.value)
    assert not path.is_file()


def test_dev_full_says_no_frame_was_written(tmp_path):
    from streamer.errors import OutputError

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(OutputError, match="no frame was written"):
        with Mp4Writer("/dev/full", fps=16, width=64, height=64) as writer:
            writer.write(np.zeros((3, 64, 64, 3), np.uint8))
