"""A prompt alone, over a stream, for several models side by side, from their `streamer eval` runs
(eval.json of `--sets text`): two panels, the share of frames per second where the named sprite is
found and where its colour also forms a second sprite-sized blob (`second_blob_rate`), each model's
moving average over its faint per-second values, averaged over the run's prompts.

    python docs/eval/text_curves.py OUT.png name=EVAL_DIR [name=EVAL_DIR ...] [--smooth S]"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from streamer.world.evaluate import moving_average  # noqa: E402

PANELS = (("found", "named sprite found (share of frames)"), ("second", "its colour as a second blob (share)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+", help="name=EVAL_DIR")
    ap.add_argument("--smooth", type=int, default=5, help="moving-average window (s)")
    args = ap.parse_args()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, spec in enumerate(args.runs):
        name, _, folder = spec.partition("=")
        res = json.loads((Path(folder) / "eval.json").read_text())
        text = next(iter(res["policies"].values()))["text_only"]
        for ax, (key, title) in zip(axes.flat, PANELS):
            y = np.array([np.nan if v is None else v for v in text["curves"][key]], float)
            x = np.arange(len(y))
            c = colours[i % len(colours)]
            ax.plot(x, y, color=c, lw=0.8, alpha=0.25)
            rate = text["summary"]["found_rate" if key == "found" else "second_blob_rate"]
            ax.plot(x, moving_average(y, args.smooth), color=c, lw=2.0, label=f"{name} (mean {rate:.2f})")
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("stream time (s)", fontsize=10)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
