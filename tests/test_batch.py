"""Prompt files, video names, sharding, resuming, and a real two-process accelerate run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streamer.batch import read_prompt_file, run_prompt_file, shard, video_name
from streamer.video import Mp4Writer, partial_path, probe_mp4

PROMPTS = """\
# four prompts for the batch tests
a red fox running in snow

  a lighthouse at night, waves crashing
# a commented-out prompt
Ein Café in Zürich, früh am Morgen
a drone flight over a canyon
"""
LINES = [2, 4, 6, 7]


def write_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def tiny_clip(prompt: str, path: Path) -> None:
    with Mp4Writer(path, 8, 32, 32) as writer:
        writer.write(np.full((4, 32, 32, 3), len(prompt) % 256, np.uint8))


def test_read_prompt_file_keeps_line_numbers(tmp_path):
    prompts = read_prompt_file(write_prompts(tmp_path))
    assert prompts == [
        (2, "a red fox running in snow"),
        (4, "a lighthouse at night, waves crashing"),
        (6, "Ein Café in Zürich, früh am Morgen"),
        (7, "a drone flight over a canyon"),
    ]


def test_read_prompt_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n   \n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompt_file(empty)


def test_video_name():
    assert video_name(7, "A red fox, running in snow!") == "0007-a-red-fox-running-in-snow.mp4"
    assert video_name(6, "Ein Café in Zürich") == "0006-ein-cafe-in-zurich.mp4"
    assert video_name(12, "日本語") == "0012-prompt.mp4"
    long = video_name(1, "word " * 40)
    assert long == "0001-" + "-".join(["word"] * 12) + ".mp4"  # 59 chars, cut between words
    assert video_name(1, "x" * 100) == "0001-" + "x" * 60 + ".mp4"


@pytest.mark.parametrize("num_processes", [1, 2, 3])
def test_shard_covers_everything_once(num_processes):
    items = list(range(10))
    shards = [shard(items, i, num_processes) for i in range(num_processes)]
    assert sorted(x for s in shards for x in s) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        shard(items, num_processes, num_processes)


def test_run_resumes(tmp_path):
    prompts, out = write_prompts(tmp_path), tmp_path / "out"
    names = {line: out / video_name(line, p) for line, p in read_prompt_file(prompts)}
    out.mkdir()
    names[2].write_bytes(b"finished earlier")  # a finished video: must be kept as it is
    partial_path(names[4]).write_bytes(b"cut off")  # an interrupted one: must be redone

    made = []

    def generate_one(prompt: str, path: Path) -> None:
        made.append(prompt)
        tiny_clip(prompt, path)

    results = run_prompt_file(prompts, out, generate_one)
    assert results == [
        (2, names[2], "skipped"),
        (4, names[4], "done"),
        (6, names[6], "done"),
        (7, names[7], "done"),
    ]
    assert len(made) == 3
    assert names[2].read_bytes() == b"finished earlier"
    assert probe_mp4(names[4])["frames"] == 4
    assert not list(out.glob("*.partial.mp4"))

    again = run_prompt_file(prompts, out, lambda p, path: pytest.fail("nothing left to make"))
    assert [status for _, _, status in again] == ["skipped"] * 4


def test_run_takes_only_its_shard(tmp_path):
    state = SimpleNamespace(process_index=1, num_processes=2)
    results = run_prompt_file(write_prompts(tmp_path), tmp_path / "out", tiny_clip, state=state)
    assert [line for line, _, _ in results] == [LINES[1], LINES[3]]


def test_failed_generation_leaves_no_final_file(tmp_path):
    def fails(prompt: str, path: Path) -> None:
        path.write_bytes(b"half a video")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_prompt_file(write_prompts(tmp_path), tmp_path / "out", fails)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["0002-a-red-fox-running-in-snow.partial.mp4"]


WORKER = """
import json, logging, sys
from pathlib import Path
import numpy as np
from accelerate import PartialState
from streamer.batch import run_prompt_file
from streamer.video import Mp4Writer

logging.basicConfig(level=logging.INFO, format="%(message)s")

def generate_one(prompt, path):
    with Mp4Writer(path, 8, 32, 32) as writer:
        writer.write(np.full((4, 32, 32, 3), len(prompt) % 256, np.uint8))

prompts, out, report = sys.argv[1:]
results = run_prompt_file(prompts, out, generate_one)
rank = PartialState().process_index
Path(report, f"{rank}.json").write_text(json.dumps([[line, str(path), status] for line, path, status in results]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(script: Path, *args: Path) -> subprocess.CompletedProcess:
    # --multi_gpu is what makes `accelerate launch` start N local processes (through torchrun);
    # with --cpu it starts one. No GPU is visible, so run_prompt_file's PartialState uses gloo.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(script), *map(str, args),
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_two_processes_with_accelerate_launch(tmp_path):
    prompts, out, report = write_prompts(tmp_path), tmp_path / "out", tmp_path / "report"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    report.mkdir()

    def run() -> dict[int, list]:
        for old in report.iterdir():
            old.unlink()
        proc = accelerate_launch(script, prompts, out, report)
        assert "[process 0/2]" in proc.stderr and "[process 1/2]" in proc.stderr
        return {int(p.stem): json.loads(p.read_text()) for p in report.iterdir()}

    first = run()
    assert sorted(first) == [0, 1]
    assert [line for line, _, _ in first[0]] == [LINES[0], LINES[2]]
    assert [line for line, _, _ in first[1]] == [LINES[1], LINES[3]]
    assert all(status == "done" for r in first.values() for _, _, status in r)
    videos = sorted(out.iterdir())
    assert [v.name for v in videos] == sorted(video_name(line, p) for line, p in read_prompt_file(prompts))
    assert all(probe_mp4(v)["frames"] == 4 for v in videos)

    stamps = {v: v.stat().st_mtime_ns for v in videos}
    second = run()
    assert all(status == "skipped" for r in second.values() for _, _, status in r)
    assert {v: v.stat().st_mtime_ns for v in sorted(out.iterdir())} == stamps
