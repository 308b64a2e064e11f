"""A streaming session: prompt in, frames out, chunk after chunk, for as long as the caller wants.

Per chunk of F latent frames: noise -> few-step sampler (each step attends to the cached history
through a CacheView) -> clean pass at t=0 that writes the chunk's K/V -> policy bookkeeping ->
streaming VAE decode -> uint8 frames. A new prompt mid-stream takes effect at the next chunk
boundary with LongLive's re-cache: the retained frames are re-run at t=0 under the new prompt, so
the self-attention cache no longer carries the old prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from streamer.cache import CacheView, ChunkPlan, KVCache
from streamer.memory import admit_stream
from streamer.pipeline import Pipeline
from streamer.policies import CachePolicy, make_policy
from streamer.sampler import SamplerConfig, denoise, randn_like


@dataclass
class StreamConfig:
    width: int = 832
    height: int = 480
    chunk_frames: int = 3  # latent frames per chunk (3 -> 12 video frames)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    policy: str = "window"
    # Knobs of the policy. Left empty, a model's own trained settings for that policy apply
    # (`Pipeline.stream_defaults`, e.g. the default model's 9-frame window), else the paper's.
    policy_args: dict[str, object] = field(default_factory=dict)
    seed: int = 0


@dataclass
class StreamChunk:
    index: int                 # chunk number in the stream
    latent_frames: list[int]   # latent frame indices generated
    frames: np.ndarray         # uint8 [N, H, W, 3] video frames decoded from this chunk
    first_video_frame: int     # index of frames[0] in the whole video
    dit_seconds: float         # sampler + clean pass
    decode_seconds: float
    prompt: str
    plan: ChunkPlan | None = None                 # what the chunk attended to, and at which positions
    attention_mass: torch.Tensor | None = None    # [layers, len(plan.labels)] when record_attention


def latent_size(pipe: Pipeline, width: int, height: int) -> tuple[int, int]:
    """Latent (h, w) for a video size; refuses sizes the VAE and patching cannot tile exactly."""
    _, sh, sw = pipe.model.config.vae_stride
    _, ph, pw = pipe.model.config.patch_size
    if width <= 0 or height <= 0 or width % (sw * pw) or height % (sh * ph):
        raise ValueError(
            f"video size {width}x{height} is not possible: width and height must be positive multiples of "
            f"{sw * pw} (VAE stride {sw} x patch {pw})")
    return height // sh, width // sw


class Session:
    def __init__(self, pipe: Pipeline, prompt: str, config: StreamConfig | None = None,
                 policy: CachePolicy | None = None):
        self.pipe = pipe
        self.config = cfg = config or StreamConfig()
        self.latent_h, self.latent_w = latent_size(pipe, cfg.width, cfg.height)
        self.grid = pipe.model.grid(self.latent_h, self.latent_w)
        policy_args = cfg.policy_args
        trained = pipe.stream_defaults or {}
        if not policy_args and trained.get("policy") == cfg.policy:
            policy_args = trained.get("policy_args", {})
        self.policy = policy or make_policy(cfg.policy, policy_args, chunk=cfg.chunk_frames)
        self.policy.validate(cfg.chunk_frames)
        mcfg = pipe.model.config
        tokens_per_frame = self.grid[0] * self.grid[1]
        # refuse, in a second and with what to lower, a stream that cannot fit (issue 14; streamer/memory.py)
        admit_stream(mcfg, tokens_per_frame, self.policy.num_slots(cfg.chunk_frames), pipe.dtype, pipe.device,
                     self.policy.needs_queries, self.policy.compressed_tokens(tokens_per_frame), cfg.chunk_frames,
                     cfg.width * cfg.height, what=f"{cfg.width}x{cfg.height}, policy {cfg.policy}")
        self.cache = KVCache(
            mcfg.num_layers, self.policy.num_slots(cfg.chunk_frames), tokens_per_frame,
            mcfg.num_heads, mcfg.head_dim, dtype=pipe.dtype, device=pipe.device,
            store_queries=self.policy.needs_queries, compressed_tokens=self.policy.compressed_tokens(tokens_per_frame),
        )
        # Per-layer attention mass per cached frame (for plots and the UI); costs nothing when off.
        self.record_attention = False
        self.generator = torch.Generator("cpu").manual_seed(cfg.seed)
        self.timesteps = cfg.sampler.timesteps()
        self.prompt = ""
        self._text = None
        self._pending_prompt: str | None = None
        self._latents: dict[int, torch.Tensor] = {}  # clean latents of cached frames, for re-cache
        self._next_frame = 0
        self._chunks = 0
        self._video_frames = 0
        # Trajectory conditioning: frames -> track channels [1, C_track, n, h, w] at latent size, or None.
        # Set by whoever owns the trajectories (UI, CLI); read once per chunk, so edits apply at the next chunk.
        self.track_condition: Callable[[list[int]], torch.Tensor | None] | None = None
        self._set_text(prompt)
        pipe.decoder.reset()

    # ---- controls -----------------------------------------------------------------------------
    def set_prompt(self, prompt: str) -> None:
        """Switch prompt; applied at the next chunk boundary (re-caching the retained frames)."""
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty")
        self._pending_prompt = prompt

    def _set_text(self, prompt: str) -> None:
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty")
        self.prompt = prompt
        emb = self.pipe.text_encoder.encode([prompt])
        self._text = self.pipe.model.encode_text(emb)

    # ---- model calls --------------------------------------------------------------------------
    def _timesteps(self, n: int, t: float) -> torch.Tensor:
        return torch.full((1, n), float(t), device=self.pipe.device)

    def _tracks(self, frames: list[int]) -> torch.Tensor | None:
        return self.track_condition(frames) if self.track_condition is not None else None

    def _commit(self, view: CacheView, x0: torch.Tensor) -> None:
        view.commit = True
        self.pipe.model.forward_chunk(x0, self._timesteps(x0.shape[2], self.config.sampler.context_timestep),
                                      self._text, view, self._tracks(view.plan.frames))
        self.policy.after_commit(self.cache, view.plan)

    def _view(self, frames: list[int]) -> CacheView:
        plan = self.policy.plan(self.cache, frames)
        mcfg = self.pipe.model.config
        return CacheView(self.cache, plan, self.grid, mcfg.head_dim, mcfg.rope_theta)

    def _recache(self) -> None:
        """LongLive prompt switch: rebuild the self-attention cache under the new prompt by re-running
        the retained frames' clean latents at t=0, chunk by chunk in temporal order."""
        held = [f for f, _ in self.cache.frames()]
        self.cache.reset()
        chunk = self.config.chunk_frames
        for i in range(0, len(held), chunk):
            frames = held[i : i + chunk]
            x0 = torch.cat([self._latents[f] for f in frames], dim=2)
            self._commit(self._view(frames), x0)

    @torch.inference_mode()
    def step(self) -> StreamChunk:
        """Generate, commit and decode the next chunk."""
        dev = self.pipe.device
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        if self._pending_prompt is not None:
            self._set_text(self._pending_prompt)
            self._pending_prompt = None
            self._recache()
        n = self.config.chunk_frames
        frames = list(range(self._next_frame, self._next_frame + n))
        view = self._view(frames)
        view.record_mass = self.record_attention
        shape = (1, self.pipe.model.config.out_channels, n, self.latent_h, self.latent_w)
        noise = randn_like(torch.empty(shape, device=dev), self.generator)

        tracks = self._tracks(frames)

        def flow(x: torch.Tensor, t: float) -> torch.Tensor:
            return self.pipe.model.forward_chunk(x, self._timesteps(n, t), self._text, view, tracks).float()

        x0 = denoise(flow, noise, self.timesteps, self.generator, self.config.sampler.num_train_timesteps)
        self._commit(view, x0)
        for j, f in enumerate(frames):
            self._latents[f] = x0[:, :, j : j + 1]
        held = {f for f, _ in self.cache.frames()}
        self._latents = {f: x for f, x in self._latents.items() if f in held}
        sync()
        t1 = time.perf_counter()
        video = self.pipe.decode(x0)
        sync()
        t2 = time.perf_counter()
        out = StreamChunk(
            index=self._chunks, latent_frames=frames, frames=video, first_video_frame=self._video_frames,
            dit_seconds=t1 - t0, decode_seconds=t2 - t1, prompt=self.prompt, plan=view.plan,
            attention_mass=torch.stack([view.mass[i] for i in sorted(view.mass)]) if view.mass else None,
        )
        self._next_frame += n
        self._chunks += 1
        self._video_frames += len(video)
        return out

    def stream(self, max_latent_frames: int | None = None) -> Iterator[StreamChunk]:
        """Yield chunks until `max_latent_frames` latent frames are made (forever when None)."""
        while max_latent_frames is None or self._next_frame < max_latent_frames:
            yield self.step()
