"""Side-by-side tables and contact sheet of several `streamer eval --contact` runs of the same command.

    python docs/eval/compare.py OUT_DIR name=EVAL_DIR [name=EVAL_DIR ...]

writes OUT_DIR/compare.md (each set's summary and per-scene rows; the autoencoder reference row once
per distinct autoencoder) and OUT_DIR/contact.png (every run's contact rows, interleaved by set)."""

import json
import sys
from pathlib import Path

import numpy as np

from streamer.world.evaluate import CONTACT_ROWS, DRAG_COLS, TEXT_COLS, TRACK_COLS, TWO_COLS, contact_sheet

REF = "reference (autoencoder)"


def _fmt(s: dict, keys) -> str:
    return " | ".join("-" if s.get(k) is None else f"{s[k]:.3g}" for k in keys)


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    runs = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in argv[1:]]
    res = {name: json.loads((d / "eval.json").read_text())["policies"] for name, d in runs}
    md = []
    for title, part, cols, keys in (
        ("Prompt + tracks, from noise", None, TRACK_COLS, ["trajectory_error_px", "missing_rate", "smear"]),
        ("Text only", "text_only", TEXT_COLS, ["found_rate", "shape_right_rate", "first_found_s"]),
        ("Two sprites, image start, a track on each", "two_sprites", TWO_COLS,
         ["trajectory_error_px", "identity_kept", "missing_rate"]),
        ("A prompt alone, then a stroke from its sprite", "drag", DRAG_COLS,
         ["grabbed", "trajectory_error_px", "phantom_rate"]),
    ):
        if not all((part or "summary") in next(iter(r.values())) for r in res.values()):
            continue  # a set some run did not stream (`--sets`; the drag set is newer than most runs)
        pick = (lambda r: r) if part is None else (lambda r, p=part: r[p])
        # each run's own autoencoder reference, once per distinct autoencoder (runs may differ in it)
        refs: list = []
        for name, r in res.items():
            if REF in r and all(pick(r[REF])["summary"] != pick(x)["summary"] for _, x in refs):
                refs.append((name, r[REF]))
        rows = [(REF if len(refs) == 1 else f"{name}: {REF}", pick(x)) for name, x in refs]
        # each run's own cache policy (its first row that is not the reference)
        rows += [(name, pick(next(v for k, v in r.items() if k != REF))) for name, r in res.items()]
        md += [f"### {title}\n", "| model | " + " | ".join(c[1] for c in cols) + " |",
               "|---" * (len(cols) + 1) + "|"]
        md += [f"| {name} | " + _fmt(x["summary"], [k for k, _ in cols]) + " |" for name, x in rows]
        md += [f"\nPer scene ({' / '.join(keys)}):\n", "| model | " + " | ".join(rows[0][1]["prompts"]) + " |",
               "|---" * (len(rows[0][1]["prompts"]) + 1) + "|"]
        md += [f"| {name} | " + " | ".join(_fmt(sc, keys).replace(" | ", " / ") for sc in x["scenes"]) + " |"
               for name, x in rows]
        md.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(md) + "\n")
    sheets = {name: np.load(d / "contact.npz") for name, d in runs}
    times = tuple(float(t) for t in sheets[runs[0][0]]["times"])
    rows = [(f"{name}, {label}", list(c[k])) for k, label in CONTACT_ROWS
            for name, c in sheets.items() if k in c]
    contact_sheet(rows, times, out / "contact.png")


if __name__ == "__main__":
    main(sys.argv[1:])
