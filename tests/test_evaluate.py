"""`streamer eval`'s metrics on frames whose answer is known, and the command on a weights folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from streamer.cli import main
from streamer.world.evaluate import HELD_OUT_SEEDS, scene_table, score_frames, summarize
from streamer.pipeline import WEIGHTS_DIR
from streamer.world.scenes import World

FPS = 16.0


@pytest.fixture(scope="module")
def clips():
    world = World()
    # one sprite and two sprites, each long enough for the 4-frame motion windows
    return [world.clip(seed, 49) for seed in HELD_OUT_SEEDS[:2]]


def summary(frames, clip) -> dict:
    return summarize([score_frames(frames, clip)], FPS)["summary"]


def test_ground_truth_scores_perfect(clips):
    for clip in clips:
        s = summary(clip.frames, clip)
        assert s["trajectory_error_px"] < 0.5  # centroid of the drawn sprite vs. the requested centre
        assert s["missing_rate"] == 0.0
        assert s["area_drift"] < 0.1
        assert s["background_change"] == 0.0
        assert s["motion_kept"] == pytest.approx(1.0, abs=0.02)


def test_shifted_video_scores_the_shift(clips):
    for clip in clips:
        shifted = np.roll(clip.frames, (3, 4), axis=(1, 2))  # every sprite 4 px right, 3 px down
        s = summary(shifted, clip)
        assert s["trajectory_error_px"] == pytest.approx(5.0, abs=0.6)
        assert s["motion_kept"] == pytest.approx(1.0, abs=0.05)  # displaced, still moving


def test_frozen_video_keeps_no_motion(clips):
    for clip in clips:
        frozen = np.repeat(clip.frames[:1], len(clip.frames), axis=0)  # the stagnation of long rollouts
        s = summary(frozen, clip)
        assert s["motion_kept"] == 0.0
        assert s["trajectory_error_px"] > 10.0


def test_background_change_and_missing_sprites(clips):
    clip = clips[0]
    brighter = clip.frames.astype(np.int16)
    brighter[1:] += 20
    s = summary(np.clip(brighter, 0, 255).astype(np.uint8), clip)
    assert s["background_change"] == pytest.approx(20 * 48 / 49, abs=1.0)  # frame 0 is the reference
    # the sprite painted over by the background colour of its first frame: never found
    empty = np.repeat(np.median(clip.frames[:1], axis=(1, 2), keepdims=True), len(clip.frames), axis=0)
    s = summary(np.broadcast_to(empty, clip.frames.shape).astype(np.uint8), clip)
    assert s["missing_rate"] == 1.0
    assert s["trajectory_error_px"] is None


def test_eval_command_scores_a_weights_folder(tmp_path):
    run = tmp_path / "run"  # what `streamer train --out` leaves
    run.mkdir()
    for name in ("dit.safetensors", "vae.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, run / name)
    out = tmp_path / "eval"
    rc = main(["eval", "--weights", str(run), "--seconds", "1", "--scenes", "1", "--policies", "window",
               "--out", str(out), "--threads", "1", "--quiet"])
    assert rc == 0
    res = json.loads((out / "eval.json").read_text())
    assert set(res["policies"]) == {"reference (autoencoder)", "window"}
    assert str(run) in res["model"]
    for row in res["policies"].values():
        assert row["summary"]["trajectory_error_px"] is not None
        assert len(row["scenes"]) == 1 and row["scenes"][0]["trajectory_error_px"] is not None
    assert (out / "eval.png").is_file() and "| window |" in (out / "eval.md").read_text()


def test_eval_command_names_a_missing_weights_file(tmp_path, capsys):
    (tmp_path / "dit.safetensors").write_bytes(b"")
    assert main(["eval", "--weights", str(tmp_path), "--seconds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vae.safetensors" in err and "Traceback" not in err


def test_scene_table_lists_each_scene():
    scene = lambda err, miss: {"trajectory_error_px": err, "missing_rate": miss}  # noqa: E731
    results = {"policies": {
        "window": {"prompts": ["one", "two"], "scenes": [scene(2.0, 0.25), scene(30.0, 0.7)]},
        "ema-sink": {"prompts": ["one", "two"], "scenes": [scene(None, 1.0), scene(12.5, 0.5)]},
    }}
    lines = scene_table(results).splitlines()
    assert lines[0] == "| policy | one: err px / missing | two: err px / missing |"
    assert lines[2] == "| window | 2 / 0.25 | 30 / 0.70 |"
    assert lines[3] == "| ema-sink | - / 1.00 | 12.5 / 0.50 |"
