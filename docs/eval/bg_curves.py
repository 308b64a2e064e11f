"""Ten-minute background change of several models side by side, from their `streamer eval` runs
(eval.json of `--seconds 600 --sets track`): one panel per metric (background change, border
minus interior change, smear), each model's moving average (30 s) over its faint per-second values,
and issue 17's target where reference values are given (1.5x the autoencoder's background change
and smear; border no larger than interior).

    python docs/eval/bg_curves.py OUT.png name=EVAL_DIR [name=EVAL_DIR ...] [--reference BG,BORDER,SMEAR]

The reference values are the autoencoder's own ten-minute row (`streamer eval` without
--no-reference; v9's autoencoder: 1.04,1.38,0.0025)."""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from streamer.world.evaluate import moving_average  # noqa: E402

PANELS = (("bg_change", "background change (0-255)"), ("border_minus_interior", "border minus interior change"),
          ("smear", "smear (0-1)"))
TARGETS = (lambda ref: 1.5 * ref[0], lambda ref: 0.0, lambda ref: 1.5 * ref[2])  # issue 17's targets


def curve(row: dict, key: str) -> np.ndarray:
    """Per-second values [T] of one metric (NaN where undefined)."""
    get = lambda k: np.array([np.nan if v is None else v for v in row["curves"][k]], float)  # noqa: E731
    return get("border_change") - get("interior_change") if key == "border_minus_interior" else get(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+", help="name=EVAL_DIR")
    ap.add_argument("--reference", help="the autoencoder's ten-minute background change, border change and smear")
    ap.add_argument("--smooth", type=int, default=30, help="moving-average window (s)")
    args = ap.parse_args()
    ref = [float(v) for v in args.reference.split(",")] if args.reference else None
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.6 * len(PANELS), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, spec in enumerate(args.runs):
        name, path = spec.split("=", 1)
        res = json.loads((Path(path) / "eval.json").read_text())
        row = [r for k, r in res["policies"].items() if not k.startswith("reference")][0]
        for ax, (key, _) in zip(axes.flat, PANELS):
            y = curve(row, key)
            x = np.arange(len(y)) / 60
            ax.plot(x, y, color=colours[i], lw=0.6, alpha=0.2)
            ax.plot(x, moving_average(y, args.smooth), color=colours[i], lw=2.0,
                    label=f"{name} ({np.nanmean(y):.3g})")
    for j, (ax, (_, title)) in enumerate(zip(axes.flat, PANELS)):
        if ref:
            v = TARGETS[j](ref)
            ax.axhline(v, color="k", ls="--", lw=1.2, label=f"target ({v:.3g})")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("stream time (min)", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    smear = axes.flat[2]
    smear.set_ylim(0, 2 * max(line.get_ydata()[len(line.get_ydata()) // 2] for line in smear.get_lines() if len(line.get_ydata()) > 2))
    fig.suptitle("one tracked held-out scene, ten minutes (thick: 30-s moving average; faint: per second)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
