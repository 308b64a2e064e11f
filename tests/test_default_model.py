"""The shipped default model: its weights load, and a short clip's sprite follows the given track."""

import numpy as np
import pytest
import torch

from streamer.pipeline import WEIGHTS_DIR, Pipeline
from streamer.session import Session, StreamConfig
from streamer.trajectory import Trajectory
from streamer.world.scenes import COLOURS, colour_centroid

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "dit.safetensors").is_file(), reason="no shipped weights")


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return Pipeline.load(device="cpu")


def test_default_pipeline_is_the_world_model(pipe):
    assert not pipe.is_random and pipe.native_size == (128, 128)
    assert pipe.model.config.track_channels == 64 and pipe.text_encoder.dim == 384
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert total < 30e6


def test_sprite_follows_the_track(pipe):
    n = 45  # 4 chunks' worth of frames at 16 fps is ~3 s; 45 frames = 12 latent frames
    t = np.arange(n, dtype=np.float32)
    path = np.stack([30 + 1.6 * t, 64 + 20 * np.sin(t / 8)], 1)[:, None]  # left to right, gently waving
    traj = Trajectory(path, np.ones((n, 1), bool), fps=16, width=128, height=128)
    session = Session(pipe, "a red circle on a grass background", pipe.stream_config(size=(128, 128)), tracks=traj)
    frames = np.concatenate([session.step().frames for _ in range(4)])[:n]
    errs = []
    for i in range(0, n, 2):
        c = colour_centroid(frames[i], COLOURS["red"], tol=100.0)  # the model's red drifts towards orange
        errs.append(np.inf if c is None else float(np.hypot(c[0] - path[i, 0, 0], c[1] - path[i, 0, 1])))
    errs = np.array(errs)
    assert np.median(errs) < 9.0, errs  # the sprite radius is 7-11 px
    assert (errs < 16).mean() > 0.7, errs


def test_the_wheel_carries_the_weights_and_builds_without_warnings(tmp_path):
    """`pip install streamer` gets the shipped model and its recipe (package data of
    streamer.weights), and building the wheel says nothing alarming to a new user (setuptools warns
    of a data folder that is not a listed package)."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).parent.parent
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Warning" not in run.stderr + run.stdout, (run.stderr + run.stdout)[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    for f in ("dit.safetensors", "vae.safetensors", "recipe.toml"):
        assert f"streamer/weights/{f}" in names
    assert "streamer/ui/canvas.js" in names
