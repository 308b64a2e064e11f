"""A prompt alone's light sprites under other cache layouts: found per chunk, without retraining.

Streams the shipped model (its own steps and hidden chunks) on prompts of the eval's sixteen held-out
text-only scenes (`text_only_clips`, seed 0, no tracks) with each cache policy and knobs given, and
prints, per prompt, the share of video frames in which `streamer eval` finds the sprite
(`score_text_only`) over the whole stream and per shown chunk (the first 9 video frames, then 12
each), so a sprite lost after a few chunks shows where it goes. Prompts 9, 10, 12 and 13 are the four
that the shipped model loses most: a white and a green triangle on sand, a green circle on sand, a
yellow triangle on snow (docs/model_history.md, "After v13, part 5").

    python docs/eval/light_policies.py SECONDS PROMPTS SPEC [SPEC ...]
    python docs/eval/light_policies.py 20 9,10,12,13 deep-sink: deep-sink:window=21 deep-sink:sink_shift=6 \
        frame-sink:window=9,sink=3 deep-sink:guidance=1.5

SPEC is `policy:key=value,key=value`; the shipped policy's own knobs (window 9, sink 3) are the start
when the policy is the shipped one, the policy's defaults otherwise. The key `guidance` is not a
knob: it sets text guidance on every denoising step (as `--guidance`). 1 thread, bf16."""

import sys

import numpy as np
import streamer  # noqa: F401  before torch, so that OpenMP waits passively ("Fast by default")
import torch

from streamer.pipeline import Pipeline
from streamer.policies import make_policy, parse_policy_args
from streamer.world.evaluate import score_text_only, stream_clip, stream_frames, text_only_clips
from streamer.world.scenes import World

def parse_spec(spec: str, defaults: dict) -> tuple[str, dict, float | None]:
    """'deep-sink:window=21,sink_shift=6' -> ('deep-sink', knobs, guidance), the knobs starting from
    the shipped ones when the policy is the shipped one. Knob values are strings; make_policy coerces
    and checks them (PolicyError). guidance: None (the model's own) unless the spec gives one."""
    policy, _, items = spec.partition(":")
    knobs = dict(defaults.get("policy_args", {})) if policy == defaults.get("policy") else {}
    knobs.update(parse_policy_args([item for item in items.split(",") if item]))
    guidance = float(knobs.pop("guidance")) if "guidance" in knobs else None
    make_policy(policy, knobs)  # a bad spec fails here, before any stream
    return policy, knobs, guidance


def main() -> None:
    seconds, prompts, specs = float(sys.argv[1]), [int(i) for i in sys.argv[2].split(",")], sys.argv[3:]
    pipe = Pipeline.load(dtype=torch.bfloat16)
    torch.set_num_threads(1)
    defaults = dict(pipe.stream_defaults or {})
    clips = text_only_clips(World(), 16, stream_frames(seconds, pipe.fps))
    # video frames per shown chunk (the causal VAE's rule): the first one's first latent frame decodes to one
    chunk, rule = pipe.stream_config().chunk_frames, pipe.decoder.frames
    first, every = rule.video_frames(chunk), rule.video_frames(chunk, first=False)
    for spec in specs:
        policy, knobs, guidance = parse_spec(spec, defaults)
        found = []
        for i in prompts:
            frames, _ = stream_clip(pipe, clips[i], policy, knobs, None, 0, tracks=False, guidance=guidance)
            f = score_text_only(frames, clips[i]).found
            starts = range(first, len(f) - every + 1, every)
            per_chunk = [f[:first].mean()] + [f[a : a + every].mean() for a in starts]
            found.append(float(f.mean()))
            print(f"{spec:34s} {clips[i].prompt:42s} {f.mean():.2f}  per chunk:",
                  " ".join(f"{x:.1f}" for x in per_chunk[:12]), flush=True)
        print(f"{spec}: mean {np.mean(found):.3f}", flush=True)


if __name__ == "__main__":
    main()
