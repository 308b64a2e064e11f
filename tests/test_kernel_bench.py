"""`streamer bench --kernels` on CPU at the tiny shape: the structure and the correctness checks
(not speed). conftest.py sets TRITON_INTERPRET=1, so when Triton is installed the kernels run too,
under the interpreter, and their calls are checked against the references the GPU run will use."""

import json
import math

import pytest

from streamer.cli import main


def test_kernel_bench_writes_checked_rows(tmp_path):
    out = tmp_path / "kernels"
    code = main(["bench", "--kernels", "--kernel-shape", "tiny", "--device", "cpu", "--repeats", "1",
                 "--out", str(out), "--quiet"])
    assert code == 0  # non-zero when any correctness check fails
    doc = json.loads((out / "kernels.json").read_text())
    assert doc["all_checks_passed"] and doc["shape"]["heads"] == 2 and doc["machine"]["cpu_threads"] >= 1
    rows = doc["rows"]
    names = {r["name"] for r in rows}
    for expected in ("torch view, first step (gather + rotate + cat + SDPA)",
                     "torch view, later steps (chunk copy + SDPA)", "torch attention_mass_reference (fp32 softmax)",
                     "torch participation_scores_reference", "torch reference"):
        assert expected in names, expected
    assert any(r["name"].startswith("sdpa ") and r["ms"] for r in rows), "no SDPA backend ran"
    assert {r["group"].split(" [")[0] for r in rows} >= {"qk RMSNorm + RoPE", "RoPE (the view's temporal rotation)",
                                                          "LayerNorm + adaLN modulate", "gated residual"}
    assert len(doc["attention_summary"]) == 2  # tiny: 2 and 4 history frames
    for r in rows:
        if r["note"].startswith("unavailable"):  # an SDPA backend this machine lacks: no time, no check
            assert r["name"].startswith("sdpa ") and r["ms"] is None
            continue
        assert r["ms"] is not None and math.isfinite(r["ms"]) and r["ms"] > 0, r
        if r["note"] == "the reference":  # what the others are checked against
            continue
        assert r["ok"] is True and math.isfinite(r["max_err"]), r
    if doc["triton_kernels"] == "interpreted":
        assert sum(r["name"].startswith("triton") for r in rows) == 2 * 2 + 1 + 4  # attention + mass per N, participation, 4 element-wise
    assert "| group |" in (out / "kernels.md").read_text()


def test_kernel_bench_flags_parse_for_the_gpu_run():
    """The flags scripts/gpu_check.sh passes, without running anything."""
    from streamer.cli import build_parser

    args = build_parser().parse_args(["bench", "--kernels", "--kernel-shape", "full", "--kernel-history", "9", "18",
                                      "--out", "x"])
    assert args.kernels and args.kernel_shape == "full" and args.kernel_history == [9, 18]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--kernels", "--kernel-shape", "huge"])
