"""The bench machinery on the tiny model: structure, baselines, outputs (not speed)."""

import json

import torch

from streamer.tools.bench import Cell, format_table, run_cell, time_recompute, time_session, build_pipeline, stream_config
from streamer.cli import main


def test_cell_reports_every_statistic_and_both_baselines():
    cell = Cell(preset="tiny", size=(32, 32))
    r = run_cell(cell, torch.device("cpu"), chunks=2, warmup=1, repeats=1, baselines=("recompute", "diffusers"))
    for key in ("fps_generate", "fps_e2e", "fps_dit", "first_frame_s", "chunk_ms_p50", "chunk_ms_p95", "chunk_ms_max", "peak_mem_mb"):
        assert r["ours"][key] > 0, key
    assert r["ours"]["fps_dit"] >= r["ours"]["fps_e2e"]  # decode is part of end-to-end
    assert r["speedup_vs_recompute"] > 0 and r["speedup_vs_diffusers"] > 0
    assert "tiny 32x32" in format_table([r])


@torch.no_grad()
def test_recompute_baseline_is_the_same_computation_without_a_cache():
    """While nothing is evicted, re-running the clean history block-causally gives exactly the K/V
    the cache holds: the baseline must produce the same latents as the session (so it is fair).
    fp32: on a CPU with bf16 units (AMX) the default dtype is bf16, whose rounding differs between a
    cached and a recomputed key far beyond this tolerance."""
    cell = Cell(preset="tiny", size=(32, 32), dtype="fp32")
    pipe = build_pipeline(cell, torch.device("cpu"))
    config = stream_config(cell, pipe)
    frames = {}
    orig = pipe.decoder.decode

    def capture(name):
        def decode(x0, state):
            frames.setdefault(name, []).append(x0.clone())
            return orig(x0, state)
        return decode

    pipe.decoder.decode = capture("ours")
    time_session(pipe, config, chunks=3, warmup=0, prompt="same")
    pipe.decoder.decode = capture("recompute")
    time_recompute(pipe, config, chunks=3, warmup=0, prompt="same")
    assert len(frames["ours"]) == len(frames["recompute"]) == 3
    for a, b in zip(frames["ours"], frames["recompute"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bench_command_writes_json_markdown_and_plots(tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "--preset", "tiny", "--size", "32x32", "--policy", "window", "ema-sink", "--chunks", "2",
                 "--warmup", "1", "--repeats", "1", "--baselines", "recompute", "--length-minutes", "0.2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert {"machine", "command", "results", "length_scaling"} <= set(doc)
    assert doc["machine"]["torch"] == torch.__version__
    assert len(doc["results"]) == 2 and set(doc["length_scaling"]) == {"window", "ema-sink"}
    # the resolved settings: a random model names no steps or hidden chunks, so Self-Forcing's 4 and none
    assert all(r["steps"] == [1000, 750, 500, 250] and r["hidden_chunks"] == 0 and not r["drift_anchor"]
               for r in doc["results"])
    assert "| cell |" in (out / "results.md").read_text()
    assert (out / "fps.png").stat().st_size > 0 and (out / "length_scaling.png").stat().st_size > 0
