"""Static-shape compilation of the DiT for streaming (`Pipeline.load(compile="static" | "graphs")`).

The compiled halves of each block must (1) give the eager stream's latents and (2) compile once per
half for a whole stream, through cache fill and evictions, whatever the policy: that is what makes
them capturable as CUDA graphs. A counting backend stands in for inductor (the graph it is handed
runs as is), so the test checks what is traced and how often, not a C++ compiler's speed."""

import copy

import pytest
import torch

from streamer.pipeline import Pipeline, compile_model
from streamer.sampler import SamplerConfig
from streamer.session import Session, StreamConfig


class CountingBackend:
    """A torch.compile backend that runs the traced graph eagerly and counts the graphs handed to it."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(preset="tiny", device="cpu", dtype=torch.float32)


def _latents(pipe, policy: str, chunks: int, **policy_args) -> torch.Tensor:
    cfg = StreamConfig(width=32, height=32, sampler=SamplerConfig(steps=(1000, 500)), policy=policy,
                       policy_args=policy_args)
    session = Session(pipe, "a red circle", cfg)
    return torch.cat([session.step().latents for _ in range(chunks)], 2)


@pytest.mark.parametrize("policy, args", [("window", {"window": 6}), ("frame-sink", {"window": 6, "sink": 3})])
def test_static_compile_traces_each_half_once_and_matches_eager(pipe, policy, args):
    torch._dynamo.reset()
    eager = _latents(pipe, policy, 5, **args)  # 15 latent frames: the 6-frame cache fills, then evicts
    compiled = copy.copy(pipe)
    compiled.model = copy.deepcopy(pipe.model)
    backend = CountingBackend()
    compile_model(compiled.model, "static", backend=backend)
    out = _latents(compiled, policy, 5, **args)
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)
    # each half traced once for the whole stream (torch shares the graph across the blocks, whose
    # weights are its inputs): the cache's growing and rolling never reach it
    assert backend.graphs == 2


def test_dynamic_block_compile_sees_the_cache_length(pipe):
    """The contrast that makes the split worth having: compiling whole blocks with static shapes
    retraces as the cache fills (so it could not be one CUDA graph)."""
    torch._dynamo.reset()
    model = copy.deepcopy(pipe.model)
    backend = CountingBackend()
    for blk in model.blocks:
        blk.forward = torch.compile(blk.forward, dynamic=False, backend=backend)
    compiled = copy.copy(pipe)
    compiled.model = model
    _latents(compiled, "window", 4, window=6)
    assert backend.graphs > 1


def test_compile_modes_are_checked(pipe):
    with pytest.raises(ValueError, match="choose one of"):
        compile_model(copy.deepcopy(pipe.model), "fast")
    with pytest.raises(ValueError, match="CUDA"):
        compile_model(copy.deepcopy(pipe.model), "graphs")
