"""Many prompts, many processes: one video per line of a prompt file.

Start the same command on every process (`accelerate launch ...`, or plain `python` for one);
each process takes every num_processes-th prompt, so no coordination is needed beyond knowing
its own index. A video is written under a `.partial.mp4` name and renamed when complete; a
finished video is never redone, so a stopped batch resumes by running the same command again.

On machines without a GPU, start several processes with
`accelerate launch --multi_gpu --num_processes N ...` (despite the flag's name): `--cpu` makes
`accelerate launch` start a single process unless it is given an MPI host file.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import PartialState

from streamer.errors import InputError, OutputError
from streamer.video import partial_path

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PROMPT_FILE_BYTES = 64 << 20


def read_prompt_file(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number from 1, prompt) for every line that is neither blank nor a `#` comment."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--prompt-file {path} is a folder; give a text file with one prompt per line")
    if not path.exists():
        raise InputError(f"prompt file {path} does not exist")
    if not stat.S_ISREG(path.stat().st_mode):
        raise InputError(f"--prompt-file {path} is not a regular file (FIFOs and devices are refused)")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise InputError(f"--prompt-file {path} is larger than {MAX_PROMPT_FILE_BYTES >> 20} MiB")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"--prompt-file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    prompts = [(n, prompt) for n, prompt in prompts if not prompt.startswith("#")]
    if not prompts:
        raise InputError(f"prompt file {path} holds no prompts (blank lines and # comments are skipped)")
    return prompts


def video_name(line_no: int, prompt: str, max_slug: int = 60) -> str:
    """`0007-a-red-fox-running-in-snow.mp4`: the line number keeps names unique and in file order."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()  # é -> e
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > max_slug:
        head = slug[: max_slug + 1]  # one extra character shows whether the cut falls between words
        slug = head.rsplit("-", 1)[0] if "-" in head else slug[:max_slug]
    return f"{line_no:04d}-{slug or 'prompt'}.mp4"


def shard(items: Sequence[T], process_index: int, num_processes: int) -> list[T]:
    """Round-robin share of `items` for one process: long and short prompts spread evenly."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process index {process_index} is outside 0..{num_processes - 1}")
    return list(items[process_index::num_processes])


def _process_state() -> PartialState:
    # Under torchrun-style launches (accelerate launch --multi_gpu, torchrun) PartialState counts
    # the processes only if it finds an accelerator or is told cpu=True; without GPUs every
    # process would otherwise take itself for process 0 of 1 and make every video.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=launched and not torch.cuda.is_available())


def run_prompt_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    generate_one: Callable[[str, Path], None],
    *,
    state: PartialState | None = None,
) -> list[tuple[int, Path, str]]:
    """Make this process's share of the videos for the prompts in `path`.

    `generate_one(prompt, partial_path)` must write a complete mp4 at `partial_path`; it is then
    renamed to `out_dir/video_name(...)`. Videos whose final file exists are skipped; a leftover
    `.partial.mp4` from an interrupted run is deleted and made again. An exception from
    `generate_one` stops this process (its partial file stays behind, to be redone next run).

    Returns (line number, final path, "done" | "skipped") for each of this process's prompts.
    """
    prompts = read_prompt_file(path)
    state = state or _process_state()
    rank, world = state.process_index, state.num_processes
    if world == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            f"launched as {os.environ['WORLD_SIZE']} processes but the accelerate state sees one; "
            "every process would make every video"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, a read-only folder
        raise OutputError(f"--out {out_dir}: cannot create the output folder ({e.strerror or e})") from None
    mine = shard(prompts, rank, world)
    who = f"[process {rank}/{world}]"
    log.info("%s %d of %d prompts from %s -> %s", who, len(mine), len(prompts), path, out_dir)

    results: list[tuple[int, Path, str]] = []
    for i, (line, prompt) in enumerate(mine, 1):
        final = out_dir / video_name(line, prompt)
        if final.exists():
            results.append((line, final, "skipped"))
            log.info("%s %d/%d line %d skipped, exists: %s", who, i, len(mine), line, final.name)
            continue
        partial = partial_path(final)
        partial.unlink(missing_ok=True)  # never let a stale partial pass for this run's output
        log.info("%s %d/%d line %d generating: %s", who, i, len(mine), line, prompt)
        generate_one(prompt, partial)
        if not partial.is_file():
            raise RuntimeError(f"generate_one wrote nothing at {partial}")
        os.replace(partial, final)  # atomic: the final name only ever holds a complete video
        results.append((line, final, "done"))
        log.info("%s %d/%d line %d done: %s", who, i, len(mine), line, final.name)
    return results
