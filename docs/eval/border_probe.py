"""The autoencoder's own border artefact: the eval's prompt + tracks scenes (held out) through the
autoencoder alone (no DiT), scored by `streamer eval`'s border / interior change (8-px band), with
the mean change by distance from the frame's edge and over time on pixels the true clip keeps static.

    python docs/eval/border_probe.py SECONDS SCENES [WEIGHTS_DIR]

WEIGHTS_DIR (default: the shipped weights) needs vae.safetensors and dit.safetensors (the pipeline
loads both; only the autoencoder is used). fp32, 1 thread; ~40 s per 20-s scene here."""
import sys, numpy as np, torch
torch.set_num_threads(1)
from streamer.world.scenes import World
from streamer.world import evaluate as E
from streamer.pipeline import Pipeline
secs = float(sys.argv[1]); nsc = int(sys.argv[2])
pipe = Pipeline.load_default(sys.argv[3] if len(sys.argv) > 3 else "streamer/weights", device="cpu", dtype=torch.float32); torch.set_num_threads(1)
world = World()
n = E.stream_frames(secs, pipe.fps)
for s in E.HELD_OUT_SEEDS[:nsc]:
    clip = world.clip(s, n)
    ref = E.reference_frames(pipe, clip)
    for name, fr in (("truth", clip.frames[:len(ref)]), ("ae", ref)):
        sc = E.score_frames(fr, clip)
        print(s, name, clip.prompt, "border %.2f interior %.2f bg %.2f" % (np.nanmean(sc.border_change), np.nanmean(sc.interior_change), np.nanmean(sc.bg_change)))
    # per-pixel mean change map relative to frame 0, all pixels (sprite-masked: pixels far from track in both)
    d = np.abs(ref.astype(np.float32) - ref[0:1].astype(np.float32)).mean(-1)
    dt = np.abs(clip.frames[:len(ref)].astype(np.float32) - clip.frames[0:1].astype(np.float32)).mean(-1)
    # where the truth is static, the change is the autoencoder's
    static = (dt < 1).mean(0) > 0.999
    m = np.where(static, d.mean(0), np.nan)
    h = m.shape[0]
    prof = [np.nanmean(np.concatenate([m[k, k:h-k], m[h-1-k, k:h-k], m[k:h-k, k], m[k:h-k, h-1-k]])) for k in range(20)]
    print("  change by distance from edge (px 0..19):", " ".join("%.2f" % p for p in prof), "| centre %.2f" % np.nanmean(m[20:-20, 20:-20]))
    # change vs time in band / interior for static pixels
    band = np.zeros((h, h), bool); band[:8] = band[-8:] = True; band[:, :8] = band[:, -8:] = True
    ts = d[:, static & band].mean(1), d[:, static & ~band].mean(1)
    q = len(ref) // 6
    print("  band over time:", " ".join("%.2f" % ts[0][i*q:(i+1)*q].mean() for i in range(6)), "| interior:", " ".join("%.2f" % ts[1][i*q:(i+1)*q].mean() for i in range(6)))
