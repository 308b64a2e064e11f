import os

# Triton kernels run under the interpreter on CPU; must be set before any @triton.jit is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")
# As `import streamer` does for users (streamer/__init__.py), before torch loads OpenMP here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def randomize(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Random weights with enough spread that every parameter visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # norm gains near 1
            p.copy_(torch.randn(p.shape, generator=g) * std + centre)
    return module


@pytest.fixture
def tiny_model():
    from streamer.models.wan import CausalWanModel, get_config

    return randomize(CausalWanModel(get_config("tiny"))).eval()


@pytest.fixture(autouse=True)
def _default_compute_path():
    """CLI and bench runs select the compute mode process-wide: every test starts from the default."""
    from streamer import kernels

    kernels.set_mode("auto")


@pytest.fixture(scope="session", autouse=True)
def _cpu_dtype_measured():
    """A machine's first default-dtype choice measures bf16 against fp32 (~4 s, then cached per
    machine, streamer/device.py): paid here once, not inside a test that times its first frame."""
    from streamer.device import cpu_dtype

    cpu_dtype()
