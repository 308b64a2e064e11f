"""The Triton kernels compiled for real, for the H100 (sm_90), on this GPU-less machine.

Triton's compiler and ptxas ship in the triton wheel and need no GPU, so the machine code a GPU
would run is checked here: every kernel compiles at the wan2.1-1.3b, 832x480 shape; the cache
attention runs on tensor cores (HGMMA) with asynchronously pipelined K/V loads and, in every
autotune config, without a single register spill; nothing asks for more shared memory than an SM has.
Speed itself needs a GPU (`streamer bench --kernels`, scripts/gpu_check.sh).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="this triton wheel ships no ptxas")


@pytest.fixture(scope="module")
def sm90_reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("aot") / "reports.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it for the others
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "streamer", "kernels", "--arch", "90", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stderr[-3000:]
    reports = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return reports


def test_every_kernel_compiles_for_sm90_and_fits(sm90_reports):
    from streamer.kernels.cache_attention import CUDA_CONFIGS

    kernels = {r["kernel"] for r in sm90_reports}
    assert kernels == {"cache_attention_kernel", "attention_mass_kernel", "participation_kernel",
                       "qk_norm_rope_kernel", "rope_kernel", "layernorm_modulate_kernel", "gated_residual_kernel"}
    attention = [r for r in sm90_reports if r["kernel"] == "cache_attention_kernel"]
    assert len(attention) == 2 * len(CUDA_CONFIGS)  # with and without compressed tokens, every config
    for r in sm90_reports:
        assert not r["error"], r
        assert r["blocks_per_sm"] >= 1 and r["shared_bytes"] <= 227 * 1024, r


def test_cache_attention_uses_tensor_cores_async_loads_and_never_spills(sm90_reports):
    for r in sm90_reports:
        if r["kernel"] == "cache_attention_kernel":
            assert r["mma"] > 0, f"no HGMMA in {r['config']}"
            assert r["async_loads"] > 0, f"K/V loads not pipelined in {r['config']}"
            assert r["spill_stores"] == 0, f"{r['config']} spills {r['stack_bytes']} bytes per thread"
        if r["kernel"] == "attention_mass_kernel":
            assert r["mma"] > 0, "the mass pass should run its q.k on tensor cores"


def test_compile_refuses_the_interpreter_with_a_clear_error():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "streamer", "kernels"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr and "Traceback" not in proc.stderr
