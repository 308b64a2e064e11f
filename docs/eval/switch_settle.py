"""How many chunks the world model takes to settle on a new background after a prompt switch: the
evidence for `streamer.anchor.SETTLE_CHUNKS`.

For each pair of prompts, streams the first with the shipped model's own settings and the drift
anchor off, switches to the second before chunk 3 (`Session.set_prompt`, LongLive's re-cache), and
prints each chunk's mean frame colour (RGB, 0-255) at every other video frame, from chunk 2 on; then
the same stream with the anchor on (which lets go at the switch and takes its new reference
`SETTLE_CHUNKS` chunks later), one mean per chunk.

    python docs/eval/switch_settle.py
1 thread, bf16."""

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.session import Session

PAIRS = (("a red circle on a grass background", "a red circle on a sand background"),
         ("a blue square on a night background", "a blue square on a snow background"),
         ("a yellow circle on a water background", "a yellow circle on a stone background"))
SWITCH, CHUNKS = 3, 9


def means(frames: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in frames.reshape(-1, 3).mean(0))


def main() -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(dtype=torch.bfloat16)
    for before, after in PAIRS:
        print(f"{before} -> {after} (switch before chunk {SWITCH})")
        for on in (False, True):
            session = Session(pipe, before, pipe.stream_config(drift_anchor=on))
            rows = []
            for k in range(CHUNKS):
                if k == SWITCH:
                    session.set_prompt(after)
                frames = session.step().frames
                if k >= SWITCH - 1:
                    rows.append(f"  chunk {k}: " + " ".join(str(means(f)) for f in frames[::2]) if not on
                                else str(means(frames)))
            print("\n".join(rows) if not on else "  anchor on, per chunk from chunk 2: " + " ".join(rows))


if __name__ == "__main__":
    main()
