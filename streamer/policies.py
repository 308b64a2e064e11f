"""KV cache policies: which cached frames a chunk attends to, at which temporal positions.

A policy is a small object with three duties, all host-side bookkeeping over `KVCache` slots:
- `num_slots(chunk)`: how many frame slots the cache must preallocate;
- `plan(cache, frames)`: at a chunk's first step, evict, choose the visible history and positions,
  reserve slots for the chunk (a `ChunkPlan`);
- `after_commit(cache, plan)`: hook run after the chunk's clean K/V were written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from streamer.cache import ChunkPlan, KVCache


class PolicyError(ValueError):
    """A policy name or knob combination that cannot work; raised before the stream starts."""


@dataclass
class CachePolicy:
    name: ClassVar[str] = ""

    def validate(self, chunk: int) -> None:
        pass

    def num_slots(self, chunk: int) -> int:
        raise NotImplementedError

    def plan(self, cache: KVCache, frames: list[int]) -> ChunkPlan:
        raise NotImplementedError

    def after_commit(self, cache: KVCache, plan: ChunkPlan) -> None:
        pass


@dataclass
class SinkWindowPolicy(CachePolicy):
    """Self-Forcing / LongLive cache: the first `sink` frames forever plus the most recent frames,
    `window` frames in all counting the chunk itself. Eviction happens at a chunk's first step.

    positions="absolute": every frame keeps its frame index (what the released checkpoints saw;
    the sink drifts ever further from the present). positions="slot": StreamingLLM re-indexing,
    the visible frames take positions 0..window-1 in temporal order, bounded forever.
    """

    name: ClassVar[str] = "window"
    window: int = 21
    sink: int = 0
    positions: str = "absolute"

    def validate(self, chunk: int) -> None:
        if self.positions not in ("absolute", "slot"):
            raise PolicyError(f"positions must be 'absolute' or 'slot', not {self.positions!r}")
        if self.window < chunk:
            raise PolicyError(f"window={self.window} frames cannot hold one chunk of {chunk} frames")
        if self.sink < 0 or self.sink > self.window - chunk:
            raise PolicyError(
                f"sink={self.sink} must be between 0 and window - chunk = {self.window - chunk}: a larger sink "
                "would leave no room for the chunk (Self-Forcing's cache silently overwrites its sink there)")

    def num_slots(self, chunk: int) -> int:
        return self.window

    def plan(self, cache: KVCache, frames: list[int]) -> ChunkPlan:
        held = cache.frames()
        sinks = [(f, s) for f, s in held if f < self.sink]
        recent = [(f, s) for f, s in held if f >= self.sink]
        n_recent = self.window - len(frames) - len(sinks)
        n_evict = max(0, len(recent) - n_recent)
        cache.free([s for _, s in recent[:n_evict]])
        visible = sinks + recent[n_evict:]
        write_slots = cache.allocate(frames)
        if self.positions == "absolute":
            hist_pos = [float(f) for f, _ in visible]
            chunk_pos = [float(f) for f in frames]
        else:
            hist_pos = [float(i) for i in range(len(visible))]
            chunk_pos = [float(len(visible) + j) for j in range(len(frames))]
        return ChunkPlan(
            frames=list(frames), positions=chunk_pos, history_slots=[s for _, s in visible],
            history_positions=hist_pos, write_slots=write_slots,
        )


@dataclass
class FrameSinkPolicy(SinkWindowPolicy):
    """LongLive's frame sink: sink 3 + 9 recent, 12 frames in all."""

    name: ClassVar[str] = "frame-sink"
    window: int = 12
    sink: int = 3


POLICIES: dict[str, type[CachePolicy]] = {p.name: p for p in (SinkWindowPolicy, FrameSinkPolicy)}


def _coerce(value: str, like: object) -> object:
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def make_policy(name: str, args: dict[str, object] | None = None, chunk: int = 3) -> CachePolicy:
    """Build and validate a policy by name; knob values may be strings (from the command line)."""
    if name not in POLICIES:
        raise PolicyError(f"unknown cache policy {name!r}; choose one of: {', '.join(POLICIES)}")
    cls = POLICIES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (args or {}).items():
        key = key.replace("-", "_")
        if key not in fields:
            raise PolicyError(f"policy {name!r} has no knob {key!r}; its knobs: {', '.join(fields) or 'none'}")
        default = fields[key].default
        kwargs[key] = _coerce(value, default) if isinstance(value, str) else value
    policy = cls(**kwargs)
    policy.validate(chunk)
    return policy


def parse_policy_args(items: list[str]) -> dict[str, str]:
    """['window=21', 'sink=3'] -> {'window': '21', 'sink': '3'}"""
    out = {}
    for item in items:
        if "=" not in item:
            raise PolicyError(f"policy argument {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
