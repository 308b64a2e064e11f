"""The autoencoder's own identity ceiling: the eval's held-out two-sprite scenes through the
autoencoder alone (no DiT), scored by `streamer eval`'s identity (the centroid of each sprite
colour's largest connected region within its radius of its own track) and error, per scene, with
the pixels of each sprite's colour against the truth's. A blurred red square on sand has an orange
rim, which the eval's colour tolerance counts as orange: it pulls the orange error (all of the
colour's pixels), and before identity took the largest region only, it failed that scene's
identity in 94-97% of frames.

    python docs/eval/identity_probe.py SECONDS SCENES [WEIGHTS_DIR]

WEIGHTS_DIR (default: the shipped weights) needs vae.safetensors and dit.safetensors (the pipeline
loads both; only the autoencoder is used). fp32, 1 thread; ~10 s per 20-s scene here."""

import numpy as np
from border_probe import probe_setup  # the sibling script (run as python docs/eval/identity_probe.py)

from streamer.world.evaluate import reference_frames, score_frames, sprite_masks, stream_frames, two_sprite_clips
from streamer.world.scenes import World


def main() -> None:
    args, pipe = probe_setup(__doc__)
    idents = []
    for clip in two_sprite_clips(World(), args.scenes, stream_frames(args.seconds, pipe.fps)):
        ref = reference_frames(pipe, clip)
        sc = score_frames(ref, clip)
        ident = float(np.nanmean(sc.identity))
        idents.append(ident)
        px = lambda frames: np.mean([sprite_masks(f, clip.scene.sprites).sum((1, 2)) for f in frames[::8]], 0)  # noqa: E731
        print(f"{clip.prompt}: identity {ident:.3f} err {np.nanmean(sc.err):.2f} px; pixels of each sprite's "
              f"colour {px(ref).round().astype(int).tolist()} (truth {px(clip.frames[:len(ref)]).round().astype(int).tolist()})")
    print(f"mean identity {np.mean(idents):.3f}")


if __name__ == "__main__":
    main()
