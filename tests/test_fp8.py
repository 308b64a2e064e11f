"""FP8 (torchao) is opt-in, applies to the blocks' linears only, and is refused with one line where it
cannot run (no CUDA GPU of compute capability 8.9+, or no torchao) before any loading."""

import sys

import pytest
import torch.nn as nn

from streamer.cli import main
from streamer.models import fp8
from streamer.models.wan import CausalWanModel, get_config


def test_fp8_takes_the_blocks_linears_only():
    model = CausalWanModel(get_config("tiny"))
    chosen = {name for name, m in model.named_modules() if fp8.fp8_layer(m, name)}
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert chosen and chosen < linears
    assert all(name.startswith("blocks.") for name in chosen)
    # every block linear of the tiny preset has sizes that are multiples of 16: all of them are taken
    assert chosen == {name for name in linears if name.startswith("blocks.")}
    assert not any(name.startswith(("condition_embedder", "proj_out")) for name in chosen)


def test_fp8_is_refused_on_cpu_before_loading(capsys):
    with pytest.raises(ValueError, match="compute capability 8.9"):
        fp8.check_fp8_device("cpu")
    from streamer.pipeline import Pipeline

    with pytest.raises(ValueError, match="FP8 needs a CUDA GPU"):
        Pipeline.load(preset="tiny", device="cpu", fp8=True)


def test_fp8_without_torchao_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(fp8, "check_fp8_device", lambda device: None)
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ValueError, match="pip install torchao"):
        fp8.quantize_fp8(CausalWanModel(get_config("tiny")))


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "x", "--fp8", "--device", "cpu", "--frames", "1"],
    ["bench", "--fp8", "on", "--device", "cpu", "--preset", "tiny"],
])
def test_cli_fp8_on_cpu_is_one_line_and_exit_2(argv, tmp_path, capsys):
    out = ["--out", str(tmp_path / ("o.mp4" if argv[0] == "generate" else "b"))]
    assert main(argv + out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FP8 needs" in err[0]
