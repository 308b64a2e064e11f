"""A prompt alone's light sprites under other cache layouts: found per chunk, without retraining.

Streams the shipped model (its own steps and hidden chunks) on prompts of the eval's sixteen held-out
text-only scenes (`text_only_clips`, seed 0, no tracks) with each cache policy and knobs given, and
prints, per prompt, the share of video frames in which `streamer eval` finds the sprite
(`score_text_only`) over the whole stream and per 12-frame chunk after the first frame, so a sprite
lost after a few chunks shows where it goes. The default prompts (9, 10, 12, 13) are the four that the
shipped model loses most: a white and a green triangle on sand, a green circle on sand, a yellow
triangle on snow (docs/model_history.md, "After v13, part 5").

    python docs/eval/light_policies.py SECONDS PROMPTS SPEC [SPEC ...]
    python docs/eval/light_policies.py 20 9,10,12,13 deep-sink: deep-sink:window=21 deep-sink:sink_gap=6 frame-sink:window=9,sink=3

SPEC is `policy:key=value,key=value`; the shipped policy's own knobs (window 9, sink 3) are the start
when the policy is the shipped one, the policy's defaults otherwise. 1 thread, bf16."""

import sys

import numpy as np
import torch

from streamer.pipeline import Pipeline
from streamer.policies import make_policy
from streamer.world.evaluate import score_text_only, stream_clip, stream_frames, text_only_clips
from streamer.world.scenes import World

CHUNK_FRAMES = 12  # video frames per chunk of 3 latent frames


def parse_spec(spec: str, defaults: dict) -> tuple[str, dict]:
    """'deep-sink:window=21,sink_gap=6' -> ('deep-sink', knobs), starting from the shipped knobs when
    the policy is the shipped one. Values are strings; make_policy coerces and checks them."""
    policy, _, items = spec.partition(":")
    knobs = dict(defaults.get("policy_args", {})) if policy == defaults.get("policy") else {}
    for item in filter(None, items.split(",")):
        key, _, value = item.partition("=")
        knobs[key] = value
    make_policy(policy, knobs)  # a bad spec fails here, before any stream
    return policy, knobs


def main() -> None:
    seconds, prompts, specs = float(sys.argv[1]), [int(i) for i in sys.argv[2].split(",")], sys.argv[3:]
    pipe = Pipeline.load(dtype=torch.bfloat16)
    torch.set_num_threads(1)
    defaults = dict(pipe.stream_defaults or {})
    clips = text_only_clips(World(), 16, stream_frames(seconds, pipe.fps))
    for spec in specs:
        policy, knobs = parse_spec(spec, defaults)
        found = []
        for i in prompts:
            frames, _ = stream_clip(pipe, clips[i], policy, knobs, None, 0, tracks=False)
            f = score_text_only(frames, clips[i]).found
            per_chunk = [f[1 + CHUNK_FRAMES * k : 1 + CHUNK_FRAMES * (k + 1)].mean()
                         for k in range((len(f) - 1) // CHUNK_FRAMES)]
            found.append(float(f.mean()))
            print(f"{spec:34s} {clips[i].prompt:42s} {f.mean():.2f}  per chunk:",
                  " ".join(f"{x:.1f}" for x in per_chunk[:12]), flush=True)
        print(f"{spec}: mean {np.mean(found):.3f}", flush=True)


if __name__ == "__main__":
    main()
