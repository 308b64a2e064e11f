"""KV cache policies: which cached frames a chunk attends to, at which temporal positions.

A policy is a small object doing host-side bookkeeping over `KVCache` slots:
- `num_slots(chunk)`, `compressed_tokens(tpf)`, `needs_queries`: what the cache must preallocate;
- `plan(cache, frames, tracked)`: at a chunk's first step, evict (or merge), choose the visible
  history and its temporal positions, reserve slots for the chunk: a `ChunkPlan` (`tracked`: whether
  any of the chunk's track channels is non-zero, for policies that lay out a prompt alone apart);
- `after_commit(cache, plan)`: run after the chunk's clean K/V were written.

Position modes: "absolute" gives every frame its frame index (what Self-Forcing and LongLive do,
reproducing their checkpoints; positions grow with the stream, exact anyway since angles are
computed in float64); "slot" numbers the visible history in temporal order from 0 (StreamingLLM),
bounded forever. Deep Sink's re-alignment (sinks placed right before the first tail frame) is
"slot" numbering up to one global shift, which RoPE cannot see.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # policies only read slot bookkeeping; importing the cache would pull in torch
    from streamer.cache import KVCache


@dataclass
class Compression:
    """Participative compression for one chunk (Deep Forcing): at the chunk's first forward, each
    layer scores the candidate tokens (its compressed buffer + `candidate_slots`) by the summed dot
    product with recent queries (`query_slots` frames + the chunk itself) and keeps the top `keep`
    in temporal order; that selection is fixed for the chunk's remaining steps."""

    candidate_slots: list[int]
    query_slots: list[int]
    keep: int                             # tokens kept per layer


@dataclass
class ChunkPlan:
    """What one chunk sees and where it goes: made by a policy once, at the chunk's first step."""

    frames: list[int]                     # the chunk's own frame indices
    positions: list[float]                # temporal RoPE position of each chunk frame
    history_slots: list[int]              # cached slots the chunk attends to
    history_positions: list[float]        # temporal RoPE position of each of those slots
    write_slots: list[int]                # slots that receive the chunk's clean K/V on the commit pass
    history_kinds: list[str] = field(default_factory=list)  # "sink" / "window" per history slot
    compressed_start: float = 0.0         # compressed tokens take the positions just before this one,
    compressed_span: float = 0.0          # this many of them (one frame's worth of tokens per position)
    compression: Compression | None = None
    position_mode: str = ""               # "absolute" / "slot" positions this chunk took ("": not said)

    @property
    def labels(self) -> list[str]:
        """One label per entry of the attention-mass vector: history frames, compressed, chunk."""
        kinds = self.history_kinds or ["window"] * len(self.history_slots)
        return [f"{k}:{p:g}" for k, p in zip(kinds, self.history_positions)] + ["compressed", "chunk"]


class PolicyError(ValueError):
    """A policy name or knob combination that cannot work; raised before the stream starts."""


@dataclass
class CachePolicy:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def validate(self, chunk: int) -> None:
        pass

    def num_slots(self, chunk: int) -> int:
        raise NotImplementedError

    def compressed_tokens(self, tokens_per_frame: int) -> int:
        return 0

    @property
    def needs_queries(self) -> bool:
        return False

    def plan(self, cache: KVCache, frames: list[int], tracked: bool = True) -> ChunkPlan:
        """The chunk `frames` (latent frame indices)'s plan; `tracked`: whether any of its track
        channels is non-zero (False: a prompt alone, or no track visible)."""
        raise NotImplementedError

    def after_commit(self, cache: KVCache, plan: ChunkPlan) -> None:
        pass


@dataclass
class SinkWindowPolicy(CachePolicy):
    """The first `sink` frames forever plus the most recent frames, `window` frames in all counting
    the chunk itself (Self-Forcing's cache; eviction at a chunk's first step).

    compress=True replaces the window by Deep Forcing's participative compression: the history is
    held to `budget` frames' worth: sinks, the `recent` newest frames, and the tokens that recent
    queries attend to most among the rest (chosen per layer).

    sink_shift (latent frames, slot positions only): once all `sink` sink frames are held, their
    temporal RoPE positions sit that many positions further back from every frame after them, the
    same distance at every chunk; the frames after the sinks keep their spacing. 0 keeps each
    policy's own layout (for deep-sink, Deep Forcing's re-alignment right before the tail). Absolute
    positions already move the sinks ever further back, so the knob is refused there. Not the
    training recipe's `sink_gap` (video frames skipped in a training clip's Deep Sink layout).

    untracked_positions ("absolute", "slot" or "": `positions`): the position mode of a chunk whose
    track channels are all zero (a prompt alone, or no track visible; a model encoding off-frame
    points, `track_outside`, gives those non-zero channels), chunk by chunk. Both modes hold the same
    frames (eviction does not depend on positions), and keys are cached before temporal RoPE, so a
    stream can switch at any chunk; `sink_shift` applies to the slot-position chunks only. The
    shipped model streams with Deep Sink's slot positions and "absolute" here: Deep Sink keeps
    tracked sprites on their tracks, and a prompt alone's sprite is kept more often when its sinks
    sit at their own, ever further back, positions (docs/model_history.md, "After v13, part 6" and
    "After v13, part 7").
    """

    name: ClassVar[str] = "window"
    summary: ClassVar[str] = "last W frames (Self-Forcing)"
    window: int = 21
    sink: int = 0
    positions: str = "absolute"
    compress: bool = False
    budget: int = 16
    recent: int = 4
    sink_shift: int = 0
    untracked_positions: str = ""

    def validate(self, chunk: int) -> None:
        if self.positions not in ("absolute", "slot"):
            raise PolicyError(f"positions must be 'absolute' or 'slot', not {self.positions!r}")
        if self.untracked_positions not in ("", "absolute", "slot"):
            raise PolicyError(f"untracked_positions must be 'absolute', 'slot' or '' (= positions), "
                              f"not {self.untracked_positions!r}")
        if self.sink_shift < 0:
            raise PolicyError(f"sink_shift={self.sink_shift} must be >= 0 latent frames")
        if self.sink_shift and (self.positions != "slot" or not self.sink):
            raise PolicyError(f"sink_shift={self.sink_shift} moves the sinks' slot positions back: it needs "
                              f"positions='slot' and sink >= 1, not positions={self.positions!r}, sink={self.sink}")
        if self.sink < 0:
            raise PolicyError(f"sink={self.sink} must be >= 0")
        if self.compress:
            if self.recent < 0 or self.budget - self.recent - self.sink < 1:
                raise PolicyError(
                    f"budget={self.budget} must exceed sink + recent = {self.sink} + {self.recent}: participative "
                    "compression needs room for at least one frame's worth of compressed tokens")
            return
        if self.window < chunk:
            raise PolicyError(f"window={self.window} latent frames cannot hold one chunk of {chunk} latent frames: "
                              "the window must be at least the chunk")
        if self.sink > self.window - chunk:
            raise PolicyError(
                f"sink={self.sink} must be at most window - chunk = {self.window - chunk}: a larger sink leaves no "
                "room for the chunk (Self-Forcing's cache silently overwrites its sink there)")

    def num_slots(self, chunk: int) -> int:
        # with compression, candidate frames stay in their slots until the chunk is committed
        return self.budget + 2 * chunk if self.compress else self.window

    @property
    def compressed_frames(self) -> int:
        return self.budget - self.recent - self.sink if self.compress else 0

    def compressed_tokens(self, tokens_per_frame: int) -> int:
        return self.compressed_frames * tokens_per_frame

    @property
    def needs_queries(self) -> bool:
        return self.compress

    def _evict(self, cache: KVCache, evicted: list[tuple[int, int]], sinks: list[tuple[int, int]]) -> None:
        cache.free([s for _, s in evicted])

    def plan(self, cache: KVCache, frames: list[int], tracked: bool = True) -> ChunkPlan:
        held = cache.frames()
        sinks = [(f, s) for f, s in held if f < self.sink]
        rest = [(f, s) for f, s in held if f >= self.sink]
        compression = None
        if not self.compress:
            n_evict = max(0, len(rest) - (self.window - len(frames) - len(sinks)))
            self._evict(cache, rest[:n_evict], sinks)
            rest = rest[n_evict:]
        elif len(held) + cache.c_count / cache.tokens_per_frame > self.budget:
            n_recent = min(self.recent, len(rest))
            candidates, rest = rest[: len(rest) - n_recent], rest[len(rest) - n_recent :]
            compression = Compression(
                candidate_slots=[s for _, s in candidates], query_slots=[s for _, s in rest],
                keep=self.compressed_tokens(cache.tokens_per_frame))
        compressed = self.compressed_frames if (compression is not None or cache.c_count) else 0
        write_slots = cache.allocate(frames)
        visible = sinks + rest
        positions = self.positions if tracked or not self.untracked_positions else self.untracked_positions
        if positions == "absolute":
            hist_pos = [float(f) for f, _ in visible]
            chunk_pos = [float(f) for f in frames]
            compressed_start = float(rest[0][0] if rest else frames[0])
        else:
            # the sinks keep positions 0.. and, once they are all held, everything after them starts
            # sink_shift further on (while a sink larger than a chunk fills, the chunks stay contiguous)
            after = len(sinks) + (self.sink_shift if len(sinks) == self.sink else 0)
            hist_pos = [float(i) for i in range(len(sinks))]
            hist_pos += [float(after + compressed + i) for i in range(len(rest))]
            first_chunk = after + compressed + len(rest)
            chunk_pos = [float(first_chunk + j) for j in range(len(frames))]
            compressed_start = float(after + compressed)
        return ChunkPlan(
            frames=list(frames), positions=chunk_pos, history_slots=[s for _, s in visible],
            history_positions=hist_pos, write_slots=write_slots,
            history_kinds=["sink"] * len(sinks) + ["window"] * len(rest),
            compressed_start=compressed_start, compressed_span=float(compressed), compression=compression,
            position_mode=positions,
        )

    def after_commit(self, cache: KVCache, plan: ChunkPlan) -> None:
        if plan.compression is not None:  # their tokens now live in the compressed buffers
            cache.free(plan.compression.candidate_slots)


@dataclass
class FrameSinkPolicy(SinkWindowPolicy):
    name: ClassVar[str] = "frame-sink"
    summary: ClassVar[str] = "first chunk kept forever + recent frames (LongLive, StreamingLLM)"
    window: int = 12
    sink: int = 3


@dataclass
class DeepSinkPolicy(SinkWindowPolicy):
    name: ClassVar[str] = "deep-sink"
    summary: ClassVar[str] = "about half the window as sinks, re-aligned right before the tail (Deep Forcing)"
    window: int = 21
    sink: int = 10
    positions: str = "slot"


@dataclass
class DeepForcingPolicy(DeepSinkPolicy):
    name: ClassVar[str] = "deep-forcing"
    summary: ClassVar[str] = "Deep Sink + participative compression to a 16-frame budget (Deep Forcing)"
    compress: bool = True


@dataclass
class EmaSinkPolicy(SinkWindowPolicy):
    """Reward Forcing's EMA-Sink: evicted frames are folded into the sink, token by token at the
    same spatial slot (keys are stored before temporal RoPE, so no phases mix), every layer."""

    name: ClassVar[str] = "ema-sink"
    summary: ClassVar[str] = "sink = running EMA of evicted frames (Reward Forcing)"
    window: int = 9
    sink: int = 3
    positions: str = "slot"
    alpha: float = 0.999

    def validate(self, chunk: int) -> None:
        super().validate(chunk)
        if self.compress:
            raise PolicyError("ema-sink does not combine with participative compression")
        if self.sink < 1:
            raise PolicyError("ema-sink needs sink >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise PolicyError(f"alpha={self.alpha} must be in [0, 1]")

    def _evict(self, cache: KVCache, evicted: list[tuple[int, int]], sinks: list[tuple[int, int]]) -> None:
        for f, slot in evicted:
            if len(sinks) < self.sink:
                break  # the sink is still filling (cannot happen with sink <= window - chunk)
            target = sinks[(f - self.sink) % self.sink][1]
            for store in (cache.k, cache.v):
                store[:, :, target].mul_(self.alpha).add_(store[:, :, slot], alpha=1.0 - self.alpha)
        cache.free([s for _, s in evicted])


def ping_pong(n: int, period_blocks: int) -> int:
    """n-th element of 0, 1, ..., K-1, K-2, ..., 1, 0, 1, ... (K = period_blocks)."""
    if period_blocks == 1:
        return 0
    m = n % (2 * period_blocks - 2)
    return m if m < period_blocks else 2 * period_blocks - 2 - m


@dataclass
class RollingSinkPolicy(CachePolicy):
    """Rolling Sink: the first `keep_blocks` blocks are kept forever; once the stream is past them,
    the chunk sees `sink_blocks` of them, chosen by a window sliding one block per chunk along the
    ping-pong replay 0..K-1, K-2..0, 1.., placed right before the `recent_blocks` newest blocks.
    Blocks are chunks; positions are slot positions, bounded."""

    name: ClassVar[str] = "rolling-sink"
    summary: ClassVar[str] = "5 sink blocks replaying the first 6 in ping-pong order + 1 recent block (Rolling Sink)"
    sink_blocks: int = 5
    keep_blocks: int = 6
    recent_blocks: int = 1

    def validate(self, chunk: int) -> None:
        if self.keep_blocks < 1 or not 1 <= self.sink_blocks <= self.keep_blocks:
            raise PolicyError(f"need 1 <= sink_blocks ({self.sink_blocks}) <= keep_blocks ({self.keep_blocks})")
        if self.recent_blocks < 0:
            raise PolicyError("recent_blocks must be >= 0")

    def num_slots(self, chunk: int) -> int:
        return (self.keep_blocks + self.recent_blocks + 1) * chunk

    def plan(self, cache: KVCache, frames: list[int], tracked: bool = True) -> ChunkPlan:
        c = len(frames)
        block = frames[0] // c
        kept_frames = self.keep_blocks * c
        held = cache.frames()
        if block <= self.keep_blocks:  # still inside the kept prefix: plain causal attention
            visible, kinds = held, ["window"] * len(held)
        else:
            recent = [(f, s) for f, s in held if f >= kept_frames]
            n_evict = max(0, len(recent) - self.recent_blocks * c)
            cache.free([s for _, s in recent[:n_evict]])
            recent = recent[n_evict:]
            start = block - self.keep_blocks  # the window over the replay advances a block per chunk
            by_frame = dict(held)
            sinks = [(f, by_frame[f]) for i in range(self.sink_blocks)
                     for b in [ping_pong(start + i, self.keep_blocks)] for f in range(b * c, (b + 1) * c)]
            visible, kinds = sinks + recent, ["sink"] * len(sinks) + ["window"] * len(recent)
        write_slots = cache.allocate(frames)
        positions = [float(i) for i in range(len(visible) + c)]
        return ChunkPlan(
            frames=list(frames), positions=positions[len(visible):], history_slots=[s for _, s in visible],
            history_positions=positions[: len(visible)], write_slots=write_slots, history_kinds=kinds,
            position_mode="slot",
        )


@dataclass
class GlobalPolicy(CachePolicy):
    """Every earlier frame, at its absolute position: Self-Forcing's `local_attn_size=-1` (the
    block-causal attention these models are trained with). Unbounded: the cache starts with
    `grow_frames` slots and grows by as many whenever it is full, so memory and per-chunk time grow
    with the stream (use it for short clips and for reference runs, a window policy for live streams)."""

    name: ClassVar[str] = "global"
    summary: ClassVar[str] = "every earlier frame, unbounded (Self-Forcing local_attn_size=-1)"
    grow_frames: int = 24

    def validate(self, chunk: int) -> None:
        if self.grow_frames < chunk:
            raise PolicyError(f"grow_frames={self.grow_frames} must hold at least one chunk of {chunk} frames")

    def num_slots(self, chunk: int) -> int:
        return self.grow_frames

    def plan(self, cache: KVCache, frames: list[int], tracked: bool = True) -> ChunkPlan:
        held = cache.frames()
        free = cache.num_slots - len(held)
        if free < len(frames):
            cache.grow(self.grow_frames * -(-(len(frames) - free) // self.grow_frames))
        write_slots = cache.allocate(frames)
        return ChunkPlan(
            frames=list(frames), positions=[float(f) for f in frames], history_slots=[s for _, s in held],
            history_positions=[float(f) for f, _ in held], write_slots=write_slots,
            history_kinds=["window"] * len(held), position_mode="absolute",
        )


POLICIES: dict[str, type[CachePolicy]] = {
    p.name: p for p in (SinkWindowPolicy, FrameSinkPolicy, DeepSinkPolicy, DeepForcingPolicy, EmaSinkPolicy,
                        RollingSinkPolicy, GlobalPolicy)
}
# constant memory and per-chunk work however long the stream: what live streams and long evals use
BOUNDED_POLICIES: tuple[str, ...] = tuple(n for n in POLICIES if n != GlobalPolicy.name)


def policy_knobs(name: str) -> dict[str, object]:
    """Knob name -> default value of a policy."""
    return {f.name: f.default for f in dataclasses.fields(POLICIES[name])}


def _coerce(key: str, value: str, like: object) -> object:
    try:
        if isinstance(like, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
    except ValueError:
        kind = ("true or false" if isinstance(like, bool) else "a whole number" if isinstance(like, int)
                else "a number")
        raise PolicyError(f"knob {key}={value!r} must be {kind}") from None
    return value


def make_policy(name: str, args: dict[str, object] | None = None, chunk: int = 3) -> CachePolicy:
    """Build and validate a policy by name; knob values may be strings (from the command line)."""
    if name not in POLICIES:
        raise PolicyError(f"unknown cache policy {name!r}; choose one of: {', '.join(POLICIES)}")
    knobs = policy_knobs(name)
    kwargs = {}
    given = {k.replace("-", "_"): v for k, v in (args or {}).items()}
    for key, value in given.items():
        if key not in knobs:
            stream = {"drift_anchor", "hidden_chunks", "steps", "guidance"}  # StreamConfig's, not the cache's
            hint = f" ({key} is a stream setting: --{key.replace('_', '-')})" if key in stream else ""
            # the values this call sets (a model's own knobs come in `args`), the defaults for the rest
            shown = {k: given.get(k, v) for k, v in knobs.items()}
            raise PolicyError(f"policy {name!r} has no knob {key!r}{hint}; its knobs (as set here, else their "
                              "defaults): " + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                                                       for k, v in shown.items()))
        kwargs[key] = _coerce(key, value, knobs[key]) if isinstance(value, str) else value
    policy = POLICIES[name](**kwargs)
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
