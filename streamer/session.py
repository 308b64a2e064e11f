"""A streaming session: prompt in, frames out, chunk after chunk, for as long as the caller wants.

Per chunk of F latent frames: noise -> few-step sampler (each step attends to the cached history
through a CacheView) -> clean pass at t=0 that writes the chunk's K/V -> policy bookkeeping ->
streaming decode -> uint8 frames. A new prompt mid-stream takes effect at the next chunk
boundary with LongLive's re-cache: the retained frames are re-run at t=0 under the new prompt, so
the self-attention cache no longer carries the old prompt.

A Session owns everything about its stream: KV cache, policy state, noise source, text and track
conditioning, the decoder's state and the clean latents it may re-cache. The `Pipeline` it runs on
(model, decoder and text-encoder weights) holds no per-stream state, so any number of sessions
can share one pipeline and be stepped in any interleaving, each giving exactly what it gives alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from streamer import checks
from streamer.anchor import DriftAnchor
from streamer.cache import CacheView, KVCache
from streamer.memory import admit_stream
from streamer.models.frames import video_to_uint8
from streamer.pipeline import Pipeline
from streamer.policies import CachePolicy, ChunkPlan, make_policy
from streamer.sampler import NoiseSource, SamplerConfig, SeededNoise, denoise


@dataclass
class StreamConfig:
    """One stream's settings. `Pipeline.stream_config(**overrides)` fills in a model's own defaults
    (native size, its trained cache policy and knobs); a StreamConfig built by hand is taken literally.

    `noise`: where the initial noise and every re-noise draw come from (a `NoiseSource`, one per
    stream); None draws from a CPU generator seeded with `seed` (the same on every machine)."""

    width: int = 832           # pixels
    height: int = 480          # pixels
    chunk_frames: int = 3      # latent frames per chunk (3 -> 12 video frames)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    policy: str = "window"
    policy_args: dict[str, object] = field(default_factory=dict)  # knobs; empty: the policy's paper defaults
    seed: int = 0
    noise: NoiseSource | None = None
    # Chunks made from noise before the first one shown (streams without start latents only): kept in
    # the KV cache (as the sink, where the policy keeps one) and in the decoder's state, not returned.
    # A model's first chunk, made with no history, is drawn a little off the background its later
    # chunks settle on (darker, or grainier); the shown stream then starts on the settled one.
    # Tracks are held at their first point meanwhile. Each costs one chunk's time before the first frame.
    hidden_chunks: int = 0
    # Shift each chunk's background cells back by the median, per channel, of its latents' difference
    # from the stream's first chunk, and move the stillest cells half of the rest of the way back to it
    # (`streamer.anchor`): a still background keeps its level, and a sprite's trail fades, for as long
    # as the stream runs.
    # For models whose scenes keep a still camera (the shipped world model turns it on), not camera motion.
    drift_anchor: bool = False


@dataclass
class StreamChunk:
    index: int                 # chunk number in the stream
    latent_frames: list[int]   # latent frame indices generated
    frames: np.ndarray         # uint8 [N, H, W, 3] video frames decoded from this chunk
    first_video_frame: int     # index of frames[0] in the whole video
    dit_seconds: float         # sampler + clean pass (or the start latents' clean pass)
    decode_seconds: float
    prompt: str
    latents: torch.Tensor | None = None           # the chunk's clean latents [1, C, n, h, w] (normalised)
    plan: ChunkPlan | None = None                 # what the chunk attended to, and at which positions
    attention_mass: torch.Tensor | None = None    # [layers, len(plan.labels)] when record_attention
    tracks: torch.Tensor | None = None            # track channels [1, C_track, n, h, w] the chunk used


def size_problem(config, width: int, height: int) -> str | None:
    """Why a video size (pixels) cannot be streamed by a model of `config` (a `WanConfig`): its VAE
    stride times its patch size must tile it exactly. None when it can; else the reason, with the
    nearest smaller size that can."""
    _, sh, sw = config.vae_stride
    _, ph, pw = config.patch_size
    gw, gh = sw * pw, sh * ph
    if width > 0 and height > 0 and not width % gw and not height % gh:
        return None
    return (f"width and height must be positive multiples of {gw} (VAE stride {sw} x patch {pw}), "
            f"e.g. {max(gw, width // gw * gw)}x{max(gh, height // gh * gh)}")


def latent_size(pipe: Pipeline, width: int, height: int) -> tuple[int, int]:
    """Latent (h, w) for a video size in pixels; raises ValueError for sizes the VAE stride and the
    patch size cannot tile exactly (`size_problem`)."""
    why = size_problem(pipe.model.config, width, height)
    if why:
        raise ValueError(f"video size {width}x{height} is not possible: {why}")
    _, sh, sw = pipe.model.config.vae_stride
    return height // sh, width // sw


class Session:
    """One stream on a shared `Pipeline`.

    Args:
        pipe: the loaded model, decoder and text encoder (shared, never modified).
        prompt: the text prompt.
        config: the stream's settings; None: `pipe.stream_config()` (the model's own defaults).
        policy: a ready cache policy (else built from `config.policy` / `config.policy_args`).
        tracks: a trajectory (`streamer.trajectory.Trajectory`, pixels of this stream's frame) the
            objects follow, or None; change it later with `set_tracks`.
        start_latents: clean latent frames [1, C, n, h, w] that begin the stream (an encoded image:
            n = 1; the last frames of a video being continued). The first `step()` writes them into
            the KV cache with a clean pass and returns their decoded frames; generation goes on
            from latent frame n. CausVid-style image-to-video: no new weights needed.

    `config.hidden_chunks` chunks are made before the first one returned (streams without start
    latents): the first `step()` makes them, writes them into the cache and the decoder's state, and
    returns the chunk after them, its time included. Chunk numbers, latent frame indices, video frame
    numbers and the trajectory's frame indices all count from that first shown chunk, as if the stream
    started there (of its first latent frame's 4 decoded frames the last is kept, so it gives 1 video
    frame as a stream's first does).

    `config.drift_anchor` holds a still background's level at the first chunk's (`streamer.anchor`).

    Raises ValueError (PolicyError) for an impossible size, policy or knob, an empty prompt, tracks
    on a model without trajectory channels, start latents of the wrong shape, a hidden_chunks that
    is not a whole number in 0..8, or a drift_anchor that is not True or False.
    """

    def __init__(self, pipe: Pipeline, prompt: str, config: StreamConfig | None = None,
                 policy: CachePolicy | None = None, tracks=None, start_latents: torch.Tensor | None = None):
        self.pipe = pipe
        self.config = cfg = config if config is not None else pipe.stream_config()
        self.latent_h, self.latent_w = latent_size(pipe, cfg.width, cfg.height)
        self.grid = pipe.model.grid(self.latent_h, self.latent_w)
        if cfg.chunk_frames < 1:
            raise ValueError(f"chunk_frames={cfg.chunk_frames} must be >= 1")
        checks.hidden_chunks(cfg.hidden_chunks)  # ValueError for anything but a whole number in 0..8
        checks.drift_anchor(cfg.drift_anchor)  # ValueError for anything but True or False
        self.policy = policy or make_policy(cfg.policy, cfg.policy_args, chunk=cfg.chunk_frames)
        self.policy.validate(cfg.chunk_frames)
        mcfg = pipe.model.config
        tokens_per_frame = self.grid[0] * self.grid[1]
        # before anything is allocated: a stream that cannot fit is refused in one line (ResourceError)
        self.memory = admit_stream(
            mcfg, tokens_per_frame, self.policy.num_slots(cfg.chunk_frames), pipe.dtype, pipe.device,
            store_queries=self.policy.needs_queries, compressed_tokens=self.policy.compressed_tokens(tokens_per_frame),
            chunk_frames=cfg.chunk_frames, video_pixels=cfg.width * cfg.height,
            what=f"{cfg.width}x{cfg.height}, {cfg.policy} with {self.policy.num_slots(cfg.chunk_frames)} cached frames")
        self.cache = KVCache(
            mcfg.num_layers, self.policy.num_slots(cfg.chunk_frames), tokens_per_frame,
            mcfg.num_heads, mcfg.head_dim, dtype=pipe.dtype, device=pipe.device,
            store_queries=self.policy.needs_queries, compressed_tokens=self.policy.compressed_tokens(tokens_per_frame),
        )
        # Per-layer attention mass per cached frame (for plots and the UI); costs nothing when off.
        self.record_attention = False
        self.noise: NoiseSource = cfg.noise if cfg.noise is not None else SeededNoise(cfg.seed)
        self.timesteps = cfg.sampler.timesteps()
        self.decoder_state = pipe.decoder.new_state()
        self.prompt = ""
        self._text = None
        self._null = None  # the empty prompt's text context, made at the first guided step
        self._pending_prompt: str | None = None
        self._latents: dict[int, torch.Tensor] = {}  # clean latents of cached frames, for re-cache
        self._next_frame = 0
        self._chunks = 0
        self._video_frames = 0
        self._track_fn: Callable[[list[int]], torch.Tensor | None] | None = None
        # Controls (a prompt, tracks) are set from other threads (the browser's, the API's) while a
        # chunk may be in the making: each chunk reads them once under this lock, which also moves
        # where a control set now applies from (the chunk index and the model's latent frame).
        self._controls = threading.Lock()
        self._controls_chunk = 0
        self._controls_frame = 0
        self._start: torch.Tensor | None = None
        self._anchor = DriftAnchor() if cfg.drift_anchor else None
        # latent frames made before the first shown one: the hidden chunks (none after start latents,
        # which are the stream's first frames). Indices a caller sees (tracks, chunks) start after them.
        self._hidden = 0 if start_latents is not None else cfg.hidden_chunks * cfg.chunk_frames
        self._set_text(prompt)
        self.set_tracks(tracks)
        if start_latents is not None:
            self._start = self._check_start(start_latents)

    # ---- controls -----------------------------------------------------------------------------
    def set_prompt(self, prompt: str) -> tuple[int, int]:
        """Switch prompt; applied at the next chunk that begins (re-caching the retained frames).
        Returns where it applies from, as `applies_from`. Raises ValueError for an empty prompt."""
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty")
        with self._controls:
            self._pending_prompt = prompt
            return self._applies_from()

    def set_tracks(self, tracks) -> tuple[int, int]:
        """Trajectories the objects follow from the next chunk that begins (a `Trajectory` in this
        stream's pixels, resized if drawn at another size, its frame 0 the stream's first frame;
        None: nothing is dragged). Each chunk reads them once, and its denoising steps and its clean
        pass all use that one reading. Returns where they apply from, as `applies_from`. Raises
        ValueError on a model without trajectory channels."""
        if tracks is not None and not self.pipe.model.config.track_channels:
            raise ValueError("this model has no trajectory channels: it cannot follow tracks")
        fn = self.pipe.track_condition(tracks, self.config.width, self.config.height) if tracks is not None else None
        with self._controls:
            self._track_fn = fn
            return self._applies_from()

    def applies_from(self) -> tuple[int, int]:
        """(chunk index, video frame) of the first chunk a prompt or tracks set now would reach, in
        the stream's numbering (chunk 0 and video frame 0 are its first shown ones): the next chunk,
        or while one is being made, the one after it (it read its controls as it began)."""
        with self._controls:
            return self._applies_from()

    def _applies_from(self) -> tuple[int, int]:
        shown = max(self._controls_frame - self._hidden, 0)
        return self._controls_chunk, self.pipe.decoder.frames.video_frames(shown) if shown else 0

    def _set_text(self, prompt: str) -> None:
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty")
        self.prompt = prompt
        emb = self.pipe.text_encoder.encode([prompt])
        self._text = self.pipe.model.encode_text(emb)

    def _null_text(self):
        """The empty prompt's text context, the unconditional half of guidance: " ", the prompt the
        default model's training drops text to (`text_dropout`)."""
        if self._null is None:
            self._null = self.pipe.model.encode_text(self.pipe.text_encoder.encode([" "]))
        return self._null

    def _check_start(self, x: torch.Tensor) -> torch.Tensor:
        want = (1, self.pipe.model.config.out_channels, self.latent_h, self.latent_w)
        if x.ndim != 5 or (x.shape[0], x.shape[1], x.shape[3], x.shape[4]) != want or x.shape[2] < 1:
            raise ValueError(f"start latents must be [1, {want[1]}, n>=1, {want[2]}, {want[3]}] for a "
                             f"{self.config.width}x{self.config.height} stream; got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("start latents hold NaN or infinite values")
        return x.to(self.pipe.device, torch.float32)

    # ---- model calls --------------------------------------------------------------------------
    def _timesteps(self, n: int, t: float) -> torch.Tensor:
        return torch.full((1, n), float(t), device=self.pipe.device)

    def _tracks(self, frames: list[int], track_fn) -> torch.Tensor | None:
        """Track channels for the model's latent frames `frames` from `track_fn` (the chunk's reading
        of the trajectory, or None); a caller's trajectory is indexed from the first shown frame, so
        hidden chunks read its first point."""
        if track_fn is None:
            return None
        return track_fn([max(f - self._hidden, 0) for f in frames])

    def _commit(self, view: CacheView, x0: torch.Tensor, tracks: torch.Tensor | None) -> None:
        view.commit = True
        self.pipe.model.forward_chunk(x0, self._timesteps(x0.shape[2], self.config.sampler.context_timestep),
                                      self._text, view, tracks)
        self.policy.after_commit(self.cache, view.plan)

    def _view(self, frames: list[int], tracks: torch.Tensor | None) -> CacheView:
        """The chunk `frames`' plan and cache view; `tracks` (its track channels, or None) tells the
        policy whether the chunk is tracked (`CachePolicy.plan`): a non-zero channel anywhere."""
        tracked = tracks is not None and bool((tracks != 0).any())
        plan = self.policy.plan(self.cache, frames, tracked)
        mcfg = self.pipe.model.config
        return CacheView(self.cache, plan, self.grid, mcfg.head_dim, mcfg.rope_theta)

    def _commit_clean(self, frames: list[int], x0: torch.Tensor, track_fn) -> None:
        """Write clean latents of `frames` into the cache, chunk by chunk in temporal order, with
        track channels from `track_fn`."""
        chunk = self.config.chunk_frames
        for i in range(0, len(frames), chunk):
            part = frames[i : i + chunk]
            tracks = self._tracks(part, track_fn)
            self._commit(self._view(part, tracks), x0[:, :, i : i + len(part)], tracks)

    def _recache(self, track_fn) -> None:
        """LongLive prompt switch: rebuild the self-attention cache under the new prompt by re-running
        the retained frames' clean latents at t=0, chunk by chunk in temporal order. Their track
        channels (and so whether the policy sees them as tracked) are read from the current
        trajectory, as for any chunk: the same as when they were made unless the tracks were replaced
        since by ones that differ over those frames (a browser stroke is invisible before it begins)."""
        held = [f for f, _ in self.cache.frames()]
        self.cache.reset()
        if held:
            self._commit_clean(held, torch.cat([self._latents[f] for f in held], dim=2), track_fn)

    def _remember(self, frames: list[int], x0: torch.Tensor) -> None:
        for j, f in enumerate(frames):
            self._latents[f] = x0[:, :, j : j + 1]
        held = {f for f, _ in self.cache.frames()}
        self._latents = {f: x for f, x in self._latents.items() if f in held}

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """This stream's next clean latents [1, C, n, h, w] -> uint8 frames [N, H, W, 3], the decoder's
        memory carried in this session's state (so call it with each chunk once, in order)."""
        return video_to_uint8(self.pipe.decoder.decode(latents, self.decoder_state))[0]

    @torch.inference_mode()
    def _generate(self) -> StreamChunk:
        """The DiT half of a step: the next chunk's clean latents, committed to the cache (frames not
        decoded yet: `_decode_into` does that, in stream order). The first call makes the hidden
        chunks first, decoding them here (the decoder's state must see them before the shown ones)."""
        dit_s = dec_s = 0.0  # the hidden chunks' time goes to the first shown chunk
        while self._next_frame < self._hidden:
            hidden = self._generate_one()
            t0 = time.perf_counter()
            self.decode(hidden.latents)  # frames dropped: only the decoder's memory of them is kept
            dit_s, dec_s = dit_s + hidden.dit_seconds, dec_s + time.perf_counter() - t0
        chunk = self._generate_one()
        chunk.dit_seconds += dit_s
        chunk.decode_seconds += dec_s  # `_decode_into` adds the chunk's own decode
        return chunk

    def _generate_one(self) -> StreamChunk:
        dev = self.pipe.device
        t0 = time.perf_counter()
        n = self._start.shape[2] if self._start is not None else self.config.chunk_frames  # latent frames made
        frames = list(range(self._next_frame, self._next_frame + n))
        with self._controls:  # this chunk's one reading of the controls
            prompt, self._pending_prompt, track_fn = self._pending_prompt, None, self._track_fn
            shown = self._next_frame >= self._hidden
            self._controls_chunk = self._chunks + 1 if shown else 0  # hidden: the first shown one reads next
            self._controls_frame = self._next_frame + n
        if prompt is not None:
            self._set_text(prompt)
            self._recache(track_fn)
            if self._anchor is not None:  # a new scene: the anchor lets go until it has settled
                self._anchor.release()
        plan, mass = None, None
        if self._start is not None:
            x0, self._start = self._start, None
            tracks = self._tracks(frames, track_fn)
            self._commit_clean(frames, x0, track_fn)
        else:
            tracks = self._tracks(frames, track_fn)  # the plan, every step and the clean pass see these
            view = self._view(frames, tracks)
            view.record_mass = self.record_attention
            noise = self.noise((1, self.pipe.model.config.out_channels, n, self.latent_h, self.latent_w)).to(dev)

            sampler = self.config.sampler

            def flow(x: torch.Tensor, t: float) -> torch.Tensor:
                ts = self._timesteps(n, t)
                v = self.pipe.model.forward_chunk(x, ts, self._text, view, tracks).float()
                if not sampler.guided(t):
                    return v
                view.record_mass = False  # attention mass is the prompted call's
                v_null = self.pipe.model.forward_chunk(x, ts, self._null_text(), view, tracks).float()
                view.record_mass = self.record_attention
                return v_null + sampler.guidance * (v - v_null)

            x0 = denoise(flow, noise, self.timesteps, self.noise, self.config.sampler.num_train_timesteps)
            if self._anchor is not None:  # before the clean pass: the cache and decoder see what is kept
                x0 = self._anchor.apply(x0)
            self._commit(view, x0, tracks)
            plan = view.plan
            mass = torch.stack([view.mass[i] for i in sorted(view.mass)]) if view.mass else None
        self._remember(frames, x0)
        if dev.type == "cuda":  # the DiT's own stream only: a decode running on a side stream goes on
            torch.cuda.current_stream(dev).synchronize()
        shown = self._next_frame >= self._hidden  # a hidden chunk is neither counted nor renumbered
        chunk = StreamChunk(
            index=self._chunks if shown else -1, latent_frames=[f - self._hidden for f in frames],
            frames=np.empty((0, 0, 0, 3), np.uint8), first_video_frame=-1,
            dit_seconds=time.perf_counter() - t0, decode_seconds=0.0, prompt=self.prompt, latents=x0, plan=plan,
            attention_mass=mass, tracks=tracks,
        )
        self._next_frame += len(frames)
        self._chunks += shown
        return chunk

    @torch.inference_mode()
    def _decode_into(self, chunk: StreamChunk, stream=None) -> StreamChunk:
        """Decode a generated chunk's latents into its frames (on `stream`, a CUDA side stream, if given)."""
        t0 = time.perf_counter()
        if stream is not None:
            with torch.cuda.stream(stream):
                chunk.frames = self.decode(chunk.latents)  # .cpu() inside waits for this stream only
        else:
            chunk.frames = self.decode(chunk.latents)
            if self.pipe.device.type == "cuda":
                torch.cuda.synchronize(self.pipe.device)
        chunk.decode_seconds += time.perf_counter() - t0
        if chunk.index == 0 and self._hidden:
            # after hidden chunks the first latent frame decodes to temporal_stride frames, where a
            # stream's first decodes to one: keep its last, so frame counts and the track timing
            # (`FrameRule`: latent frame 0 is video frame 0) are those of a stream without them
            n = len(chunk.latent_frames)
            chunk.frames = chunk.frames[len(chunk.frames) - self.pipe.decoder.frames.video_frames(n):]
        chunk.first_video_frame = self._video_frames
        self._video_frames += len(chunk.frames)
        return chunk

    def step(self) -> StreamChunk:
        """Generate, commit and decode the next chunk (or, first, the start latents)."""
        return self._decode_into(self._generate())

    @property
    def latent_frames_done(self) -> int:
        """Latent frames made and shown (start latents included, hidden chunks not)."""
        return self._next_frame - min(self._next_frame, self._hidden)

    def _more(self, max_latent_frames: int | None) -> bool:
        return (max_latent_frames is None or self.latent_frames_done < max_latent_frames
                or self._start is not None)

    def stream(self, max_latent_frames: int | None = None, overlap: bool = False) -> Iterator[StreamChunk]:
        """Yield chunks until `max_latent_frames` latent frames are made (forever when None).

        overlap: decode chunk k on a second thread (on CUDA also a second stream, ordered by an event)
        while the DiT makes chunk k+1. Chunks come out in order with the same bytes as without; chunk
        k is yielded once chunk k+1's DiT is done, so throughput rises where DiT and decoder can run
        side by side (a GPU) and each chunk waits one DiT time longer. `tools/bench.py` measures it.
        """
        if not overlap:
            while self._more(max_latent_frames):
                yield self.step()
            return
        from concurrent.futures import ThreadPoolExecutor

        dev = self.pipe.device
        side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        with ThreadPoolExecutor(1, thread_name_prefix="streamer-decode") as pool:
            pending = None
            while self._more(max_latent_frames):
                chunk = self._generate()
                if side is not None:  # the side stream starts once the latents are written
                    side.wait_stream(torch.cuda.current_stream(dev))
                nxt = pool.submit(self._decode_into, chunk, side)
                if pending is not None:
                    yield pending.result()
                pending = nxt
            if pending is not None:
                yield pending.result()
