"""`streamer generate` end to end, as a user runs it."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from streamer.cli import latent_frames_for, main, process_seconds
from streamer.video import probe_mp4

SMALL = ["--size", "64x64", "--quiet"]


def test_latent_frames_cover_the_request():
    assert latent_frames_for(1, 3) == 3
    assert latent_frames_for(9, 3) == 3  # 1 + 4 + 4
    assert latent_frames_for(10, 3) == 6
    assert latent_frames_for(81, 3) == 21  # Wan's 81 frames = 21 latents


def test_generate_writes_a_playable_mp4(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a red fox", "--frames", "30", "--out", str(out), *SMALL]) == 0
    info = probe_mp4(out)
    assert (info["frames"], info["width"], info["height"], info["codec"]) == (30, 64, 64, "h264")
    printed = capsys.readouterr().out
    assert "wrote 30 frames" in printed
    # the first frame's latency, counted from the process's start (this test process: pytest's own
    # start-up included, so only bounded below by what the run itself took)
    first = float(re.search(r"first frame ([0-9.]+) s after start", printed).group(1))
    assert 0 < first <= process_seconds()


def test_process_seconds_counts_from_the_process_start():
    a = process_seconds()
    time.sleep(0.05)
    assert a > 0 and process_seconds() - a == pytest.approx(0.05, abs=0.04)


def test_process_seconds_leaves_out_what_a_shell_did_before_it_became_streamer():
    """`bash -c 'setup && streamer ...'` (the README's first line) execs streamer in the shell's
    process: the set-up's time is the process's, not the command's. A plain start counts from the
    process's start, so Python's own start-up is in it."""
    import subprocess
    import sys

    code = "from streamer.cli import process_seconds; print(process_seconds())"
    plain = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    late = subprocess.run(["bash", "-c", f'sleep 2.5 && exec "{sys.executable}" -c "{code}"'],
                          capture_output=True, text=True, check=True).stdout
    assert 0 < plain < 2.5 and 0 < float(late) < 2.0, (plain, late)


def test_prompt_file_makes_one_video_per_line_and_resumes(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n# a comment\n\na blue car\n")
    args = ["generate", "--prompt-file", str(prompts), "--frames", "9", "--out", str(tmp_path / "out"), *SMALL]
    assert main(args) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["0001-a-red-fox.mp4", "0004-a-blue-car.mp4"]
    assert main(args) == 0
    assert "0 videos made, 2 already there" in capsys.readouterr().out


def test_a_prompt_longer_than_the_text_encoder_reads_and_a_video_under_a_frame_are_noted(tmp_path, capsys):
    long = ("a red circle moving slowly from the left edge of the frame to the right edge over a bright green "
            "grass background, while a blue square waits at the top and a yellow star spins")
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", long, "--seconds", "0.01", "--out", str(out), *SMALL]) == 0
    err = capsys.readouterr().err
    assert ("note: --prompt is 38 tokens; the text encoder reads the first 32, so it ignores 'top and a yellow "
            "star spins'") in err
    assert "note: --seconds 0.01 is under one frame at 16 fps; writing one frame (0.062 s)" in err
    assert probe_mp4(out)["frames"] == 1
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a red fox\n{long}\n")
    args = ["generate", "--prompt-file", str(prompts), "--frames", "1", "--out", str(tmp_path / "o"), *SMALL]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "note: the prompt of 0002-a-red-circle-moving" in err and "38 tokens" in err and "0001" not in err
    from streamer.batch import video_name

    (tmp_path / "o" / video_name(2, long)).unlink()
    assert main(args) == 0  # made again alone: noted again; the video already there is not
    assert capsys.readouterr().err.count("38 tokens") == 1


@pytest.mark.parametrize("args,message", [
    (["--size", "30x30"], "not possible"),
    (["--size", "big"], "must look like 832x480"),
    (["--policy", "lru"], "choose one of: window, frame-sink"),
    (["--policy", "frame-sink", "--policy-arg", "sink=99"], "window - chunk"),
    (["--frames", "0"], "at least 1"),
])
def test_bad_input_gives_a_clear_error(tmp_path, capsys, args, message):
    try:
        code = main(["generate", "--prompt", "p", "--out", str(tmp_path / "x.mp4"), "--quiet", *args])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_checkpoint_gives_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "weights.safetensors"
    bad.write_text("not weights")
    assert main(["generate", "--prompt", "p", "--out", str(tmp_path / "x.mp4"), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors" in err and "Traceback" not in err


def _start(out, frames=100_000):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # SIGINT back to its default in the child, as in a terminal: a test run launched in the background
    # by a non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "streamer", "generate", "--prompt", "a long walk", "--frames",
                             str(frames), "--out", str(out), *SMALL], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_frames(out, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if out.exists() and out.stat().st_size > 0:
            try:
                if probe_mp4(out)["frames"] >= n:
                    return
            except Exception:  # noqa: BLE001  a fragment may be half-written while we read
                pass
        time.sleep(0.5)
    raise TimeoutError


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_interrupted_run_keeps_a_playable_file(tmp_path, sig):
    out = tmp_path / "long.mp4"
    proc = _start(out)
    _wait_for_frames(out, 20, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    info = probe_mp4(out)
    assert info["frames"] >= 20 and (info["width"], info["height"]) == (64, 64)
    if sig != signal.SIGKILL:
        err = proc.stderr.read()
        assert proc.returncode == 130 and "frames made so far" in err and "Traceback" not in err


def test_prompt_file_under_accelerate_launch_shards_across_processes(tmp_path):
    from tests.test_batch import accelerate_launch

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\nfour\n")
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom streamer.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    proc = accelerate_launch(script, "generate", "--prompt-file", prompts, "--frames", "5", "--out", out, *SMALL)
    done = [line for line in proc.stderr.splitlines() if line.startswith("[process") and " done: " in line]
    assert len(done) == 4 and sum("[process 0/2]" in d for d in done) == 2
    assert sorted(p.name for p in out.iterdir()) == ["0001-one.mp4", "0002-two.mp4", "0003-three.mp4", "0004-four.mp4"]
    assert all(probe_mp4(p)["frames"] == 5 for p in out.iterdir())


def test_tracks_file_steers_the_default_model_or_is_refused_clearly(tmp_path, capsys):
    import numpy as np

    from streamer.pipeline import Pipeline
    from streamer.trajectory import Trajectory

    path = tmp_path / "tracks.npz"
    t = np.arange(20, dtype=np.float32)
    Trajectory(np.stack([10 + 2 * t, 32 + 0 * t], 1)[:, None], np.ones((20, 1), bool), fps=16, width=64,
               height=64).save(path)
    out = tmp_path / "steered.mp4"
    code = main(["generate", "--prompt", "a red circle", "--frames", "9", "--tracks", str(path), "--out", str(out),
                 *SMALL])
    if Pipeline.load(device="cpu").model.config.track_channels:
        assert code == 0 and probe_mp4(out)["frames"] == 9
    else:
        assert code == 2 and "trajectory channels" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["generate", "--prompt", "p", "--frames", "9", "--tracks", str(broken), "--out", str(out), *SMALL]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_tracks_shorter_than_the_video_are_noted_or_looped(tmp_path, capsys, monkeypatch):
    import numpy as np

    from streamer.pipeline import Pipeline
    from streamer.trajectory import Trajectory

    if not Pipeline.load(device="cpu").model.config.track_channels:
        pytest.skip("needs the shipped model (trajectory channels)")
    path = tmp_path / "loop.json"
    t = np.arange(10, dtype=np.float32)
    Trajectory(np.stack([20 + 2 * t, 32 + 0 * t], 1)[:, None], np.ones((10, 1), bool), fps=16, width=64,
               height=64).save(path)
    seen = []
    original = Pipeline.track_condition

    def spy(self, trajectory, width, height):
        seen.append(trajectory)
        return original(self, trajectory, width, height)

    monkeypatch.setattr(Pipeline, "track_condition", spy)
    out = tmp_path / "v.mp4"
    args = ["generate", "--prompt", "a red circle", "--frames", "25", "--tracks", str(path), "--out", str(out), *SMALL]
    assert main(args) == 0
    assert "the tracks cover 0.62 s of the 1.56 s video" in capsys.readouterr().err
    assert seen[-1].num_frames == 10
    assert main([*args, "--loop-tracks"]) == 0
    assert "tracks cover" not in capsys.readouterr().err
    looped = seen[-1]  # one pass stored, repeated per frame on demand (no copy of the whole video)
    assert looped.loop and looped.num_frames == 10
    for f in (3, 13, 23, 10**9 + 3):
        assert np.array_equal(looped.frame(f)[0], looped.tracks[3]) and looped.frame(f)[1].all()
    assert probe_mp4(out)["frames"] == 25


def test_loop_tracks_cost_no_memory_per_video_frame(tmp_path, capsys, monkeypatch):
    """A looped path for a stream of 10^9 frames is not built up front (issue 14: it took 7.45 GiB)."""
    from streamer.trajectory import Trajectory

    traj = Trajectory(np.zeros((10, 2, 2), np.float32) + 5, np.ones((10, 2), bool), fps=16, width=64, height=64)
    looping = traj.looping()
    assert looping.tracks.nbytes == traj.tracks.nbytes
    assert np.array_equal(looping.resized(128, 128).frame(10**9 + 1)[0], traj.tracks[1] * 2)


def test_track_fps_is_resampled_like_the_browser_import(tmp_path, capsys, monkeypatch):
    """A track file at 8 fps drives a 16 fps video at the same speed, the way the browser's import
    does it (ui/strokes.py: timed strokes sampled at the stream's fps), not frame for frame."""
    from streamer.pipeline import Pipeline
    from streamer.trajectory import Trajectory
    from streamer.ui.strokes import parse_strokes, strokes_to_trajectory, trajectory_to_strokes

    t = np.arange(9, dtype=np.float32)
    path_xy = np.stack([10 + 5 * t, 20 + 0.25 * t**2], 1)
    traj = Trajectory(np.stack([path_xy, path_xy[::-1]], 1), np.ones((9, 2), bool), fps=8, width=64, height=64)
    mine = traj.resampled(16)
    assert mine.fps == 16 and mine.num_frames == 17  # 1 s of motion either way
    canvas = (64.0, 64.0)
    browser = strokes_to_trajectory(parse_strokes(trajectory_to_strokes(traj, canvas), canvas), canvas, (64, 64),
                                    16, mine.num_frames)
    np.testing.assert_allclose(mine.tracks, browser.tracks, atol=0.02)
    assert np.array_equal(mine.tracks[::2], traj.tracks)

    if not Pipeline.load(device="cpu").model.config.track_channels:
        pytest.skip("needs the shipped model (trajectory channels)")
    file = tmp_path / "slow.json"
    traj.save(file)
    seen = []
    original = Pipeline.track_condition
    monkeypatch.setattr(Pipeline, "track_condition",
                        lambda self, tr, w, h: seen.append(tr) or original(self, tr, w, h))
    out = tmp_path / "v.mp4"
    assert main(["generate", "--prompt", "a red circle", "--frames", "9", "--tracks", str(file), "--out", str(out),
                 *SMALL]) == 0
    assert "resampled" in capsys.readouterr().err
    assert seen[-1].fps == 16 and np.allclose(seen[-1].tracks, mine.tracks)


def test_help_imports_no_torch():
    """`streamer --help` and `streamer generate --help` answer at once: building their parsers imports
    neither torch nor any subcommand's module (each of those takes seconds to import)."""
    import subprocess
    import sys

    code = ("import sys\nfrom streamer.cli import build_parser\n"
            "for argv in (['--help'], ['generate', '--help']):\n"
            "    build_parser(argv)\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'gradio', 'streamer.tools.bench') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "x", "--size", "0x0", "--out", "o.mp4"],
    ["generate", "--out", "o.mp4"],                                  # no --prompt
    ["generate", "--prompt", "x", "--chunk", "0", "--out", "o.mp4"],
    ["generate", "--prompt", "x", "--compile", "graphs", "--device", "cpu", "--frames", "1", "--out", "o.mp4"],
    ["bogus"],
])
def test_argument_errors_are_one_line_and_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "usage:" not in err[0]


def test_a_policy_knob_changes_that_knob_of_the_models_own_policy_and_the_anchor_follows_its_flag():
    """`--policy-arg` on the model's own policy keeps its other trained knobs (as `streamer eval`
    does); on another policy the knobs start from that policy's paper defaults. (Knobs given are
    text until the policy reads them.)"""
    import torch

    from streamer.cli import _stream_config, build_parser
    from streamer.pipeline import Pipeline

    own = {"policy": "deep-sink", "policy_args": {"window": 9, "sink": 3, "untracked_positions": "absolute"}}
    pipe = Pipeline.load(preset="tiny", device="cpu", dtype=torch.float32)
    pipe.stream_defaults = own
    parse = build_parser().parse_args
    for argv, want in (([], own["policy_args"]),
                       (["--policy-arg", "window=12"], {"window": "12", "sink": 3, "untracked_positions": "absolute"}),
                       (["--policy", "deep-sink", "--policy-arg", "sink=4"],
                        {"window": 9, "sink": "4", "untracked_positions": "absolute"}),
                       (["--policy", "frame-sink", "--policy-arg", "sink=2"], {"sink": "2"})):
        args = parse(["generate", "--prompt", "p", "--out", "x.mp4", *argv])
        assert _stream_config(args, pipe).policy_args == want, argv
    # --drift-anchor: the model's own when not given, else as given
    pipe.stream_defaults = {**own, "drift_anchor": True}
    for argv, want in (([], True), (["--drift-anchor", "off"], False), (["--drift-anchor", "on"], True)):
        assert _stream_config(parse(["generate", "--prompt", "p", "--out", "x.mp4", *argv]), pipe).drift_anchor is want
    pipe.stream_defaults = own
    assert _stream_config(parse(["generate", "--prompt", "p", "--out", "x.mp4"]), pipe).drift_anchor is False


def test_version_names_the_package_and_the_shipped_model(capsys):
    """`streamer --version` (exit 0, no torch import needed) names the default model's version, the
    head of its DiT's "step" metadata."""
    from safetensors import safe_open

    from streamer.cli import shipped_model_version
    from streamer.pipeline import WEIGHTS_DIR

    with safe_open(str(WEIGHTS_DIR / "dit.safetensors"), "pt") as f:
        step = f.metadata()["step"]
    assert shipped_model_version() == step.split(":")[0] and step.startswith("v")
    assert main(["--version"]) == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"streamer {version('streamer')}, default model {step.split(':')[0]}"


@pytest.mark.parametrize("first, warned", [("torch", True), ("streamer", False)])
def test_importing_torch_before_streamer_warns_that_openmp_keeps_spinning(first, warned):
    """OpenMP reads OMP_WAIT_POLICY when torch loads it: after that, streamer's passive default comes
    too late, and a script that imported torch first is told so, once."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    second = "streamer" if first == "torch" else "torch"
    run = subprocess.run([sys.executable, "-c", f"import {first}, {second}, os; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, env=env, check=True)
    assert ("torch was imported before streamer" in run.stderr) == warned, run.stderr
    assert run.stdout.strip() == "PASSIVE"  # it still reaches the processes this one starts


def test_generate_without_arguments_names_everything_missing_at_once(capsys):
    from streamer.cli import main

    assert main(["generate"]) == 2
    assert "required: --out, one of --prompt --prompt-file" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a red circle"]) == 2  # the group given: only --out is missing
    err = capsys.readouterr().err
    assert "required: --out (" in err and "one of" not in err


@pytest.mark.parametrize("argv, unknown, missing", [
    (["--bogus", "generate"], "--bogus", "--out, one of --prompt --prompt-file"),
    (["generate", "--prompt", "x", "--bogus"], "--bogus", "--out)"),
    (["generate", "--out", "x.mp4", "--promt", "a b"], "--promt", "one of the arguments --prompt --prompt-file"),
    (["generate", "-x", "--prompt", "a"], "-x", "--out)"),
])
def test_an_unknown_option_is_named_before_what_is_missing(argv, unknown, missing, capsys):
    """argparse reports missing arguments before unknown ones; a typo is the likelier fault, so the
    one line names it first (before, `--promt` read as a missing --prompt alone)."""
    from streamer.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"streamer generate: error: unrecognized arguments: {unknown} (and ") and missing in err
    assert len(err.splitlines()) == 1


def test_a_value_that_starts_with_dashes_is_not_called_an_unknown_option(capsys):
    from streamer.cli import main

    assert main(["generate", "--prompt", "--a dream"]) == 2
    assert capsys.readouterr().err.strip() == ("streamer generate: error: the following arguments are required: "
                                               "--out (see streamer generate --help)")


def test_a_second_interrupt_while_the_first_is_handled_is_one_line_too(tmp_path):
    """Ctrl-C twice while the model loads (or `timeout`, which signals the whole group): the second
    signal arrives while the first one's handler cleans up, and must not end it in a traceback. Here
    the cleanup itself sends the second SIGINT and a SIGTERM; the handlers are back afterwards."""
    code = (
        "import os, signal, sys\n"
        "import streamer.cli as cli\n"
        "from streamer import checks\n"
        "def loading(args):\n"
        "    raise KeyboardInterrupt\n"
        "def cleanup():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "cli.cmd_generate, checks.remove_made_folders = loading, cleanup\n"
        "code = cli.main(['generate', '--prompt', 'x', '--out', 'o.mp4', '--quiet'])\n"
        "print(code, signal.getsignal(signal.SIGINT) is signal.default_int_handler,\n"
        "      signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["130", "True", "True"], (run.stdout, run.stderr)
    assert run.stderr.strip() == "streamer: interrupted" and "Traceback" not in run.stderr
