"""Few-step flow-matching sampler of Self-Forcing, one chunk at a time.

Steps [1000, 750, 500, 250] are warped through the flow-matching schedule with shift 5, giving
t = [1000, 937.5, 833.33.., 625] and sigma = t / 1000. The model predicts the flow v;
x0 = x_t - sigma * v (in float64, as the reference wrapper does), and each next step re-noises
x0 with fresh Gaussian noise drawn from the caller's generator. Timesteps stay floats: rounding
833.33 to 833 changes the outputs of the released checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplerConfig:
    steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    warp: bool = True
    context_timestep: float = 0.0  # timestep of the clean pass that writes the chunk's K/V

    def timesteps(self) -> list[float]:
        n = self.num_train_timesteps
        out = []
        for step in self.steps:
            if not 0 < step <= n:
                raise ValueError(f"denoising step {step} outside (0, {n}]")
            if self.warp:
                # FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True): sigmas = linspace(1, 0, n+1)[:-1]
                s = 1.0 - (n - step) / n
                s = self.shift * s / (1 + (self.shift - 1) * s)
                out.append(s * n)
            else:
                out.append(float(step))
        return out


SAMPLER_PRESETS: dict[str, SamplerConfig] = {
    "self-forcing-4": SamplerConfig(),
    "3-step": SamplerConfig(steps=(1000, 666, 333)),
    "2-step": SamplerConfig(steps=(1000, 500)),
    "1-step": SamplerConfig(steps=(1000,)),
}


def sampler_for_steps(n: int) -> SamplerConfig:
    """Evenly spaced steps from 1000 (Self-Forcing's 4 steps are [1000, 750, 500, 250])."""
    if n < 1:
        raise ValueError("steps must be >= 1")
    return SamplerConfig(steps=tuple(round(1000 - i * 1000 / n) for i in range(n)))


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise drawn on the generator's own device (a CPU generator gives the same stream
    on every machine), then moved to x's device and dtype."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


FlowFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t, t) -> predicted flow v


def denoise(
    flow: FlowFn, noise: torch.Tensor, timesteps: list[float], generator: torch.Generator | None,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Run the few-step sampler on one chunk, starting from pure noise; returns the clean x0."""
    x = noise
    for i, t in enumerate(timesteps):
        sigma = t / num_train_timesteps
        v = flow(x, t)
        x0 = (x.double() - sigma * v.double()).to(noise.dtype)
        if i + 1 == len(timesteps):
            return x0
        nxt = timesteps[i + 1] / num_train_timesteps
        eps = randn_like(x0, generator)
        x = (1 - nxt) * x0 + nxt * eps
    raise ValueError("no timesteps")
