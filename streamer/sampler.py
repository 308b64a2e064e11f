"""Few-step flow-matching sampler of Self-Forcing, one chunk at a time.

Steps [1000, 750, 500, 250] are warped through the flow-matching schedule with shift 5, giving
t = [1000, 937.5, 833.33.., 625] and sigma = t / 1000. The model predicts the flow v;
x0 = x_t - sigma * v (in float64, as the reference wrapper does), and each next step re-noises
x0 with fresh Gaussian noise drawn from the caller's generator. Timesteps stay floats: rounding
833.33 to 833 changes the outputs of the released checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplerConfig:
    steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    warp: bool = True
    context_timestep: float = 0.0  # timestep of the clean pass that writes the chunk's K/V
    # Text classifier-free guidance: v = v(empty prompt) + guidance * (v(prompt) - v(empty prompt)),
    # the chunk's cache view and tracks the same in both calls. 1 = off (one model call per step, as
    # the distilled Self-Forcing/CausVid checkpoints are run). Applied only at the steps whose
    # timestep lies in guidance_interval [low, high] (Kynkaanniemi et al. 2024, "Applying guidance in
    # a limited interval"): each guided step costs a second model call.
    guidance: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1000.0)

    def __post_init__(self) -> None:
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance {self.guidance} must be a finite number >= 0 (1: off)")
        low, high = self.guidance_interval
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"guidance_interval {self.guidance_interval} must be [low, high] timesteps, low <= high")

    def guided(self, t: float) -> bool:
        """Whether the step at timestep t runs the guided (two-call) prediction."""
        return self.guidance != 1.0 and self.guidance_interval[0] <= t <= self.guidance_interval[1]

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


def own_sampler(steps) -> SamplerConfig:
    """The sampler a model's metadata asks for ("steps" of its "stream" entry): a count n (evenly
    spaced from 1000, `sampler_for_steps`) or the timesteps themselves (a decreasing list in
    (0, 1000], warped as Self-Forcing's are). The shipped world model is sampled with more steps
    than Self-Forcing's 4, since it was trained by flow matching, not distilled to 4 steps (README,
    "The default model"). Raises ValueError for anything else."""
    if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= 1000:
        return sampler_for_steps(steps)
    if (isinstance(steps, (list, tuple)) and steps and all(isinstance(t, int) and not isinstance(t, bool)
                                                           and 0 < t <= 1000 for t in steps)
            and all(a > b for a, b in zip(steps, steps[1:]))):
        return SamplerConfig(steps=tuple(steps))
    raise ValueError(f"a model's sampler steps must be a count from 1 to 1000 or decreasing timesteps in "
                     f"(0, 1000]; got {steps!r}")


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise drawn on the generator's own device (a CPU generator gives the same stream
    on every machine), then moved to x's device and dtype."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


class NoiseSource(Protocol):
    """Where a stream's Gaussian draws come from: called with a shape, returns a float32 tensor of
    that shape (any device; the caller moves it). A stream calls it once per chunk for the initial
    noise, then once per re-noise between denoising steps, in that order. One instance per stream."""

    def __call__(self, shape: Sequence[int]) -> torch.Tensor: ...


class SeededNoise:
    """The default source: a CPU `torch.Generator` seeded once, so a seed gives the same draws on
    every machine (the stream Self-Forcing's seeded inference draws, in the same order)."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def __call__(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)


class RecordingNoise:
    """Passes another source's draws through and keeps a copy of each (`draws`), to replay a run
    later with `RecordedNoise` or to hand to another implementation."""

    def __init__(self, source: NoiseSource):
        self.source, self.draws = source, []

    def __call__(self, shape: Sequence[int]) -> torch.Tensor:
        x = self.source(shape)
        self.draws.append(x.detach().cpu().clone())
        return x

    def save(self, path) -> None:
        """The draws as one safetensors file (`draw_00000`, ...), readable by any framework."""
        from safetensors.torch import save_file

        save_file({f"draw_{i:05d}": x.contiguous() for i, x in enumerate(self.draws)}, str(path))


class RecordedNoise:
    """Replays recorded draws in order (e.g. another implementation's, or a `RecordingNoise`'s).
    Raises ValueError when a draw's shape differs from the one asked for or the record runs out."""

    def __init__(self, draws: Sequence[torch.Tensor]):
        self.draws, self.used = list(draws), 0

    @classmethod
    def load(cls, path) -> RecordedNoise:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls([tensors[k] for k in sorted(tensors)])

    def __call__(self, shape: Sequence[int]) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise ValueError(f"recorded noise exhausted after {self.used} draws")
        x = self.draws[self.used]
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"recorded noise draw {self.used} has shape {tuple(x.shape)}, the stream asks {tuple(shape)}")
        self.used += 1
        return x.float()


FlowFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t, t) -> predicted flow v


def denoise(
    flow: FlowFn, noise: torch.Tensor, timesteps: list[float],
    draw: NoiseSource | torch.Generator | None, num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Run the few-step sampler on one chunk [B, C, F, h, w], starting from pure noise; returns the
    clean x0 in the noise's dtype. Re-noise draws come from `draw`: a `NoiseSource`, or a generator
    (None: the global RNG) as in `randn_like`."""
    x = noise
    for i, t in enumerate(timesteps):
        sigma = t / num_train_timesteps
        v = flow(x, t)
        x0 = (x.double() - sigma * v.double()).to(noise.dtype)
        if i + 1 == len(timesteps):
            return x0
        nxt = timesteps[i + 1] / num_train_timesteps
        eps = draw(x0.shape).to(x0.device, x0.dtype) if callable(draw) else randn_like(x0, draw)
        x = (1 - nxt) * x0 + nxt * eps
    raise ValueError("no timesteps")
