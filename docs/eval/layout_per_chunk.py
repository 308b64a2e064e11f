"""`streamer eval` with the cache layout chosen per chunk: no track, absolute sinks; tracks, Deep Sink.

A probe of a layout the shipped model does not stream with (docs/model_history.md, "After v13,
part 6"). The shipped model's Deep Sink (window 9, sink 3: the first chunk kept, re-aligned right
before the 3 newest latent frames) keeps tracked sprites on their tracks, and loses a prompt alone's
light sprites. The same frames at their absolute positions (`frame-sink`, LongLive's layout, whose
sinks drift back a chunk at a time) keep those sprites and lose some of the tracks' precision. Both
hold the same frames (the same eviction), so only the temporal positions need to differ: here every
chunk whose track channels are all zero (a prompt alone, or every sprite out of view) is planned by
`frame-sink` window 9 sink 3, every other chunk by the model's own Deep Sink. Prints `streamer
eval`'s tables, then how many chunk plans took each layout.

    python docs/eval/layout_per_chunk.py EVAL_ARGS...
    python docs/eval/layout_per_chunk.py --seconds 60 --scenes 4 --sets track,text --threads 1 --dtype bf16 --no-reference --out out/switch

EVAL_ARGS are `streamer eval`'s (the default policy only: the patch replaces how the session plans)."""

import sys

import streamer.session as session
from streamer.cli import main
from streamer.policies import make_policy

ABSOLUTE = make_policy("frame-sink", {"window": 9, "sink": 3})
_own_view = session.Session._view
plans = {"absolute (no track)": 0, "own (tracks)": 0}


def view_per_chunk(self, frames: list[int]) -> session.CacheView:
    """Session._view, planned by frame-sink's absolute positions for a chunk without any track."""
    tracks = self._tracks(frames)
    if tracks is not None and bool((tracks != 0).any()):
        plans["own (tracks)"] += 1
        return _own_view(self, frames)
    plans["absolute (no track)"] += 1
    own, self.policy = self.policy, ABSOLUTE  # neither has commit bookkeeping (no compression)
    try:
        return _own_view(self, frames)
    finally:
        self.policy = own


if __name__ == "__main__":
    session.Session._view = view_per_chunk
    try:
        code = main(["eval", *sys.argv[1:]])
    finally:
        print("chunk plans:", plans, flush=True)
    sys.exit(code)
