"""The loaded parts of a streamer: DiT, text encoder, streaming decoder, on one device.

`Pipeline.load()` with no paths gives the default model: the project's own "world-128" model
(streamer/weights/, trained by `streamer train` on the synthetic sprite world; 128x128, 16 fps,
MiniLM text, trajectory channels, tiny streaming decoder). `preset="tiny"` gives a small *random*
model (noise-like video at full speed, for tests) and `Pipeline.description` says so; with
`checkpoint`, `vae` and `text_encoder` paths it loads real Wan / Self-Forcing / LongLive weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from streamer import checks
from streamer.device import configure_threads, default_device, default_dtype  # noqa: F401 (re-exported)
from streamer.memory import check_weights_fit
from streamer.models.text import CachedTextEncoder, HashTextEncoder
from streamer.models.wan import CausalWanModel, WanConfig, get_config

WEIGHTS_DIR = Path(__file__).parent / "weights"

COMPILE_MODES = ("off", "blocks", "static", "graphs")


def check_compile(mode: bool | str | None, device: torch.device | str) -> str:
    """The compile mode by name (True = "blocks", False/None = "off"), checked for `device` before
    anything is loaded. Raises ValueError for an unknown mode, or "graphs" (CUDA graphs) off CUDA."""
    mode = "blocks" if mode is True else "off" if mode in (False, None) else mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    if mode == "graphs" and torch.device(device).type != "cuda":
        raise ValueError("compile 'graphs' captures CUDA graphs: it needs a CUDA device")
    return mode


def compile_model(model: CausalWanModel, mode: bool | str, backend: str | Callable = "inductor") -> None:
    """torch.compile a causal Wan DiT in place for streaming.

    - "off" (or False): eager.
    - "blocks" (or True): each whole block, dynamic shapes (one graph, guarded on the cache's length).
    - "static": each block's two halves around its self-attention (`WanBlock.attention_inputs`,
      `WanBlock.after_attention`), static shapes. They see only the chunk's own tokens, so their
      shapes are the same at every chunk whatever the cache policy or fill: one graph per half, shared
      by all blocks (plus one for a first chunk of another size, e.g. an image start's single frame).
      The self-attention over the cache, whose key length changes until the cache is full, stays
      eager: one SDPA or cache-attention kernel call per layer.
    - "graphs": "static" with mode="reduce-overhead", i.e. each half replayed as a CUDA graph (its
      inputs copied into static buffers; CUDA only), which removes the per-kernel launch cost that
      dominates a small chunk's forward on a fast GPU.

    `backend`: torch.compile's backend for "blocks" and "static" (tests pass a counting one).
    Raises ValueError for another mode, or "graphs" on a model that is not on CUDA."""
    mode = check_compile(mode, next(model.parameters()).device)
    if mode == "off":
        return
    for blk in model.blocks:
        if mode == "blocks":
            blk.forward = torch.compile(blk.forward, dynamic=True, backend=backend)
        elif mode == "static":
            blk.attention_inputs = torch.compile(blk.attention_inputs, dynamic=False, backend=backend)
            blk.after_attention = torch.compile(blk.after_attention, dynamic=False, backend=backend)
        else:
            blk.attention_inputs = _graphed(torch.compile(blk.attention_inputs, dynamic=False, mode="reduce-overhead"))
            blk.after_attention = _graphed(torch.compile(blk.after_attention, dynamic=False, mode="reduce-overhead"))


def _graphed(fn):
    """A CUDA-graphed function made safe to call many times per step: each call starts a new
    cudagraph-trees iteration, and its outputs are cloned out of the graph's static buffers (the
    cache keeps K/V and the next layer reads x after later replays would overwrite them; the copies
    are a few MB per layer, microseconds on an H100)."""

    def call(*args):
        torch.compiler.cudagraph_mark_step_begin()
        out = fn(*args)
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    return call


def check_preset_fits(preset: str, dtype: torch.dtype, device: torch.device | str) -> None:
    """Raise ResourceError when a random DiT of `preset` cannot be built on `device` in `dtype`
    (`memory.check_weights_fit`), before any of it is allocated: its weights are counted on the meta
    device, so a 14B preset on a small machine is refused in a second instead of exhausting memory."""
    with torch.device("meta"):
        params = sum(p.numel() for p in CausalWanModel(get_config(preset)).parameters())
    check_weights_fit(params, dtype, device, f"a random {preset} DiT")


@dataclass
class Pipeline:
    """Shared, read-only parts of a streamer: DiT, streaming decoder and text encoder weights on one
    device. Holds no per-stream state (a `Session` carries its own cache, noise, conditioning and
    decoder state), so many sessions can run on one pipeline."""

    model: CausalWanModel
    decoder: object  # StreamingWanDecoder or TinyStreamingDecoder: new_state(), decode(latents, state), frames
    text_encoder: CachedTextEncoder
    device: torch.device
    dtype: torch.dtype
    fps: float = 16.0  # Wan's frame rate
    native_size: tuple[int, int] = (832, 480)  # (width, height) the model was trained at
    description: str = ""
    is_random: bool = False
    trajectory_encoder: object | None = None
    # Stream settings the model was trained for ({"policy": ..., "policy_args": {...}}): see stream_config.
    stream_defaults: dict | None = None

    def stream_config(self, *, size: tuple[int, int] | None = None, policy: str | None = None,
                      policy_args: dict | None = None, steps: int | None = None, chunk_frames: int = 3,
                      seed: int = 0, noise=None, guidance: float | None = None,
                      hidden_chunks: int | None = None, drift_anchor: bool | None = None):
        """A `StreamConfig` with this model's defaults under the given overrides: the one place stream
        defaults are decided (CLI, UI, eval and bench all come here). size (width, height) in pixels,
        default the model's native size; policy default the model's trained one, else "window"; knobs
        default the model's trained knobs when the policy is the one it was trained with, else the
        paper's; steps (denoising steps, evenly spaced from t = 1000: `sampler_for_steps`) default the
        model's own (its metadata's "steps": a count, or the timesteps themselves), else Self-Forcing's
        4 ([1000, 750, 500, 250]); guidance (text CFG scale, 1 = off) default the model's own (its
        metadata's, with its timestep interval), else 1. Raises ValueError for a guidance below 0 or
        a model whose "steps" is not a count or a list of timesteps in (0, 1000]. hidden_chunks (chunks made
        before the first shown one, `StreamConfig.hidden_chunks`) default the model's own (its
        metadata's "hidden_chunks"), else 0. drift_anchor (`StreamConfig.drift_anchor`, `streamer.anchor`)
        defaults the model's own (its metadata's "drift_anchor"), else off."""
        import dataclasses

        from streamer.sampler import SamplerConfig, own_sampler, sampler_for_steps
        from streamer.session import StreamConfig

        width, height = size or self.native_size
        trained = self.stream_defaults or {}
        policy = policy or trained.get("policy", "window")
        if not policy_args and trained.get("policy") == policy:
            policy_args = trained.get("policy_args", {})
        own = trained.get("steps")
        if steps:
            sampler = sampler_for_steps(steps)
        elif own is not None:
            sampler = own_sampler(own)
        else:
            sampler = SamplerConfig()
        guide = {"guidance": float(trained.get("guidance", 1.0) if guidance is None else guidance)}
        if "guidance_interval" in trained:
            guide["guidance_interval"] = tuple(float(t) for t in trained["guidance_interval"])
        sampler = dataclasses.replace(sampler, **guide)
        hidden = int(trained.get("hidden_chunks", 0)) if hidden_chunks is None else hidden_chunks
        anchor = bool(trained.get("drift_anchor", False)) if drift_anchor is None else drift_anchor
        return StreamConfig(width=width, height=height, chunk_frames=chunk_frames, sampler=sampler, policy=policy,
                            policy_args=dict(policy_args or {}), seed=seed, noise=noise, hidden_chunks=hidden,
                            drift_anchor=anchor)

    def knobs_over_own(self, policy: str | None, knobs: dict | None) -> dict | None:
        """`knobs` laid over this model's trained knobs when `policy` is its own policy (None: the
        model's), so a caller who names one knob keeps the others (`streamer generate --policy-arg`,
        the API's policy_args; `streamer eval` lays its own the same way); for another policy, or no
        knobs, `knobs` as given (`stream_config` then starts from the model's knobs or the policy's
        paper defaults)."""
        trained = self.stream_defaults or {}
        if knobs and (policy or trained.get("policy")) == trained.get("policy"):
            return {**trained.get("policy_args", {}), **knobs}
        return knobs

    def track_condition(self, trajectory, width: int, height: int):
        """latent frame indices -> track channels [1, C, n, h, w] for a trajectory drawn at any size,
        used at a width x height stream (None: the model has no trajectory channels). Stateless."""
        if not self.model.config.track_channels:
            return None
        from streamer.models.trajectory_encoder import make_track_condition

        _, sh, sw = self.model.config.vae_stride
        traj = trajectory.resized(width, height) if trajectory is not None else None
        return make_track_condition(traj, (height // sh, width // sw), self.model.config.track_channels,
                                    device=self.device, dtype=self.dtype,
                                    outside=self.model.config.track_outside)

    @classmethod
    def load(
        cls, checkpoint: str | Path | None = None, vae: str | Path | None = None,
        text_encoder: str | Path | None = None, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None, preset: str | None = None, seed: int = 0,
        checkpoint_options: dict | None = None, decoder: str | None = None, compile: bool | str = False,
        fp8: bool = False,
    ) -> Pipeline:
        """Load a pipeline. With nothing given: the shipped default model. `preset` (e.g. "tiny",
        "wan2.1-1.3b"): a random DiT of that size (timing, tests). `checkpoint` / `vae` /
        `text_encoder`: real weights. dtype default `device.default_dtype` (bf16 on CUDA; on CPU whichever
        of bf16 and fp32 streams faster there, measured once per machine). `decoder`: "full" (a random full-size Wan VAE), "tiny" (the project's
        random tiny decoder) or "taehv" (a random TAEHV at taew2_1's size, models/taehv.py) in place of
        the model's own, for timing a decoder without its weights. `vae` may also be a TAEHV file
        (`taew2_1.pth`, detected by its keys): real Wan latents then decode at TAEHV speed.
        `compile`: see `compile_model` (False/"off", True/"blocks", "static", "graphs"). `fp8`: the
        blocks' linear layers in FP8 through torchao (`models.fp8`; CUDA sm_89+). checkpoint_options:
        keyword arguments of `models.loader.load_model` (weights_key, lora, lora_scale, lora_alpha,
        config). Raises ValueError for a compile mode or FP8 this device cannot run, before loading."""
        device = torch.device(device) if device is not None else default_device()
        compile = check_compile(compile, device)  # before any loading, as FP8 below: fail at once
        if fp8:  # before any loading: a run that cannot use FP8 fails at once
            from streamer.models.fp8 import check_fp8_device

            check_fp8_device(device)
        if device.type == "cpu":
            configure_threads()
        dtype = dtype or default_dtype(device)
        if decoder not in (None, "model", "full", "tiny", "taehv"):
            raise ValueError(f"decoder {decoder!r}: choose model, full, tiny or taehv")
        if checkpoint is None and vae is None and text_encoder is None and preset is None \
                and (WEIGHTS_DIR / "dit.safetensors").is_file():
            pipe = cls.load_default(device=device, dtype=dtype)
        else:
            pipe = cls._load_parts(checkpoint, vae, text_encoder, device, dtype, preset, seed, checkpoint_options)
        if decoder == "full":
            from diffusers import AutoencoderKLWan

            from streamer.models.vae import StreamingWanDecoder

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                pipe.decoder = StreamingWanDecoder(torch.nn.Module.to(AutoencoderKLWan(), device=device, dtype=dtype))
            pipe.description += "; random full-size Wan VAE"
        elif decoder == "tiny":
            from streamer.models.tiny_vae import TinyStreamingDecoder, TinyVAE

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                pipe.decoder = TinyStreamingDecoder(TinyVAE().to(device=device, dtype=dtype))
            pipe.description += "; random tiny decoder"
        elif decoder == "taehv":
            from streamer.models.taehv import TAEHVDecoder

            pipe.decoder = TAEHVDecoder.random(seed=seed + 1, device=device, dtype=dtype)
            pipe.description += "; random TAEHV decoder (taew2_1 size)"
        if fp8:  # before compiling: the compiled graphs then hold the FP8 matmuls
            from streamer.models.fp8 import quantize_fp8

            n = quantize_fp8(pipe.model)
            pipe.description += f"; FP8 linears ({n})"
        compile_model(pipe.model, compile)
        return pipe

    @classmethod
    def _load_parts(cls, checkpoint, vae, text_encoder, device: torch.device, dtype: torch.dtype,
                    preset: str | None, seed: int, checkpoint_options: dict | None) -> Pipeline:
        preset = preset or "tiny"
        notes = []
        if checkpoint is not None:
            from streamer.models.loader import load_model

            model = load_model(checkpoint, device=device, dtype=dtype, **(checkpoint_options or {}))
            notes.append(f"DiT {checkpoint}")
        else:
            check_preset_fits(preset, dtype, device)
            torch.manual_seed(seed)
            model = CausalWanModel(get_config(preset)).to(device=device, dtype=dtype)
            notes.append(f"random {preset} DiT (no trained weights)")
        model.eval().requires_grad_(False)
        cfg = model.config
        from streamer.models.vae import StreamingWanDecoder

        from streamer.models.taehv import TAEHVDecoder, is_taehv_file

        if vae is not None and is_taehv_file(vae):  # taew2_1.pth: the tiny decoder for Wan latents
            decoder = TAEHVDecoder.from_file(vae, device=device, dtype=dtype)
            if decoder.latent_channels != cfg.out_channels:
                from streamer.models.errors import CheckpointError

                raise CheckpointError(f"--vae {vae}: a TAEHV for {decoder.latent_channels}-channel latents; this DiT "
                                      f"makes {cfg.out_channels} (Wan 2.1 needs taew2_1.pth)")
            notes.append(f"TAEHV tiny decoder {vae}")
        elif vae is not None:
            decoder = StreamingWanDecoder.from_pretrained(vae, device=device, dtype=dtype)
            notes.append(f"VAE {vae}")
        else:
            decoder = StreamingWanDecoder.random_tiny(seed=seed + 1, device=device, dtype=dtype)
            notes.append("random tiny VAE")
        if text_encoder is not None:
            from streamer.models.text import UMT5TextEncoder

            enc = UMT5TextEncoder.from_pretrained(text_encoder, device=device, dtype=dtype)
            notes.append(f"umT5 {text_encoder}")
        else:
            enc = HashTextEncoder(dim=cfg.text_dim, text_len=cfg.text_len)
            notes.append("hash text encoder (prompts carry no meaning)")
        if getattr(enc, "dim", cfg.text_dim) != cfg.text_dim:
            raise ValueError(f"text encoder width {enc.dim} does not match the DiT's text_dim {cfg.text_dim}")
        # a random preset the size of a real model streams at that model's size
        native = (320, 192) if checkpoint is None and preset == "tiny" else (832, 480)
        return cls(model=model, decoder=decoder, text_encoder=CachedTextEncoder(enc), device=device, dtype=dtype,
                   description="; ".join(notes), is_random=checkpoint is None, native_size=native)

    @classmethod
    def load_default(cls, weights: str | Path = WEIGHTS_DIR, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, warmup: bool = True) -> Pipeline:
        """The shipped world model: DiT + tiny streaming decoder + MiniLM, from `weights`."""
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file

        from streamer.models.sentence import load_text_encoder
        from streamer.models.tiny_vae import TinyStreamingDecoder, TinyVAE
        from streamer.models.trajectory_encoder import TrajectoryEncoder

        device = torch.device(device)
        weights = Path(weights)
        missing = [n for n in ("dit.safetensors", "vae.safetensors") if not (weights / n).is_file()]
        if missing:
            from streamer.models.loader import CheckpointError

            raise CheckpointError(f"{weights}: no {' or '.join(missing)} there (a world-model folder holds both; "
                                  "`streamer train --out` writes them)")
        source = "shipped weights" if weights.resolve() == WEIGHTS_DIR.resolve() else str(weights)
        with safe_open(str(weights / "dit.safetensors"), "pt") as f:
            meta = f.metadata() or {}
        stream_defaults = json.loads(meta["stream"]) if "stream" in meta else None
        try:  # the stream settings the model names, checked as it loads, not at a stream's first chunk
            if stream_defaults is not None and not isinstance(stream_defaults, dict):
                raise ValueError(f'its "stream" metadata must be an object of settings; got {meta["stream"][:60]!r}')
            if stream_defaults and "steps" in stream_defaults:
                from streamer.sampler import own_sampler

                own_sampler(stream_defaults["steps"])
            checks.hidden_chunks((stream_defaults or {}).get("hidden_chunks", 0))
            checks.drift_anchor((stream_defaults or {}).get("drift_anchor", False))
        except ValueError as e:
            from streamer.models.loader import CheckpointError

            raise CheckpointError(f"{weights}: {e}") from None
        cfg = json.loads(meta["config"])
        cfg = WanConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        model = CausalWanModel(cfg)
        model.load_state_dict({k: v.float() for k, v in load_file(str(weights / "dit.safetensors")).items()})
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        # the tiny decoder stays fp32 on CPU (its small convs gain nothing from bf16 there)
        vae_dtype = torch.float32 if device.type == "cpu" else dtype
        decoder = TinyStreamingDecoder(TinyVAE.from_file(weights / "vae.safetensors", device=device, dtype=vae_dtype))
        enc = load_text_encoder(meta.get("text_encoder", "minilm"), text_len=cfg.text_len)
        pipe = cls(model=model, decoder=decoder, text_encoder=CachedTextEncoder(enc), device=device, dtype=dtype,
                   fps=16.0, native_size=(128, 128), is_random=False,
                   description=f"default world-128 model ({source}; step {meta.get('step', '?')})",
                   trajectory_encoder=TrajectoryEncoder(cfg.track_channels, outside=cfg.track_outside),
                   stream_defaults=stream_defaults)
        if warmup:  # first calls into oneDNN convs/matmuls are slow: pay that at load, not at the first frame
            with torch.inference_mode():
                pipe.decoder.decode(torch.zeros(1, 16, 1, 16, 16, device=device), pipe.decoder.new_state())
        return pipe
