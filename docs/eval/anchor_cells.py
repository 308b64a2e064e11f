"""Which cells the drift anchor should move: a prompt alone with the anchor off, on every cell, and
on background cells only (`streamer.anchor`, the shipped rule).

Streams prompts of the eval's sixteen held-out text-only scenes (`text_only_clips`, seed 0, no
tracks) with the shipped model's own settings, three ways, and prints per prompt the share of video
frames in which `streamer eval` finds the sprite (`score_text_only`):

- off: `drift_anchor=False` (v14's streams);
- every cell: the drift (`median_offset`) taken off every cell of the frame, the sprite's included;
- background: v15's rule, the cells whose difference from the reference once the drift is off is
  under `BACKGROUND_RMS` (the hold, which v16 adds, off).

Then the quantiles of that difference (RMS over channels) over every anchored cell: where a still
background's cells sit, and where a sprite's do (docs/model_history.md, "After v14").

    python docs/eval/anchor_cells.py SECONDS PROMPTS      # e.g. 20 5,14 (a yellow square on stone,
                                                          # an orange diamond on night)
1 thread, bf16."""

import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

import streamer.anchor as anchor
from streamer.pipeline import Pipeline
from streamer.world.evaluate import score_text_only, stream_clip, stream_frames, text_only_clips
from streamer.world.scenes import World


def main(seconds: float, prompts: list[int]) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load_default(dtype=torch.bfloat16)
    own = pipe.stream_defaults or {}
    clips = text_only_clips(World(), max(prompts) + 1, stream_frames(seconds, pipe.fps))
    shipped = anchor.anchor_latents
    anchor.HOLD = 0.0  # which cells the shift moves (v15's rule); the hold came after (history, "After v15")
    rests: list[torch.Tensor] = []

    def every_cell(latents, reference):
        return (latents.float() - anchor.median_offset(latents, reference)).to(latents.dtype)

    def background(latents, reference):
        drift = anchor.median_offset(latents, reference)
        rests.append((latents.float() - reference.float() - drift).pow(2).mean(1).sqrt().flatten())
        return shipped(latents, reference)

    try:
        for i in prompts:
            clip, row = clips[i], []
            for name, rule in (("off", None), ("every cell", every_cell), ("background", background)):
                anchor.anchor_latents = rule or shipped
                frames, _ = stream_clip(pipe, clip, own.get("policy", "window"), own.get("policy_args", {}), None, 0,
                                        tracks=False, drift_anchor=rule is not None)
                row.append(f"{name} {np.mean(score_text_only(frames, clip).found):.3f}")
            print(f"{clip.prompt}: found, anchor {', '.join(row)}", flush=True)
    finally:
        anchor.anchor_latents = shipped
    q = torch.cat(rests).quantile(torch.tensor([0.5, 0.75, 0.9, 0.95, 0.99]))
    print("a cell's difference from the reference once the drift is off (RMS over channels), quantiles "
          "50/75/90/95/99%: " + " ".join(f"{v:.3f}" for v in q.tolist()))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python docs/eval/anchor_cells.py SECONDS PROMPTS", file=sys.stderr)
        sys.exit(2)
    main(float(sys.argv[1]), [int(i) for i in sys.argv[2].split(",")])
