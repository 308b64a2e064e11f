"""The loaded parts of a streamer: DiT, text encoder, streaming decoder, on one device.

`Pipeline.load()` with no paths gives the default model: the project's own "world-128" model
(streamer/weights/, trained by `streamer train` on the synthetic sprite world; 128x128, 16 fps,
MiniLM text, trajectory channels, tiny streaming decoder). `preset="tiny"` gives a small *random*
model (noise-like video at full speed, for tests) and `Pipeline.description` says so; with
`checkpoint`, `vae` and `text_encoder` paths it loads real Wan / Self-Forcing / LongLive weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.models.text import CachedTextEncoder, HashTextEncoder, UMT5TextEncoder
from streamer.models.vae import StreamingWanDecoder, video_to_uint8
from streamer.models.wan import CausalWanModel, WanConfig, get_config

WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class Pipeline:
    model: CausalWanModel
    decoder: StreamingWanDecoder
    text_encoder: CachedTextEncoder
    device: torch.device
    dtype: torch.dtype
    fps: float = 16.0  # Wan's frame rate
    native_size: tuple[int, int] = (832, 480)  # (width, height) the model was trained at
    description: str = ""
    is_random: bool = False
    # Trajectory conditioning (models with track channels): Trajectory -> session.track_condition.
    trajectory_encoder: object | None = None
    # Stream settings the model was trained for (e.g. the cache window): defaults for CLI / UI.
    stream_defaults: dict | None = None

    def track_condition(self, trajectory, width: int, height: int):
        """`Session.track_condition` for a trajectory at a stream size (None: no trajectory channels)."""
        if not self.model.config.track_channels:
            return None
        from streamer.models.trajectory_encoder import make_track_condition

        _, sh, sw = self.model.config.vae_stride
        traj = trajectory.resized(width, height) if trajectory is not None else None
        return make_track_condition(traj, (height // sh, width // sw), self.model.config.track_channels,
                                    device=self.device, dtype=self.dtype)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Clean latents of one chunk -> uint8 frames [N, H, W, 3] (streaming: state carried over)."""
        return video_to_uint8(self.decoder.decode(latents))[0]

    @classmethod
    def load(
        cls, checkpoint: str | Path | None = None, vae: str | Path | None = None,
        text_encoder: str | Path | None = None, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None, preset: str | None = None, seed: int = 0,
        checkpoint_options: dict | None = None,
    ) -> Pipeline:
        """checkpoint_options: keyword arguments of `models.loader.load_model` (weights_key, lora,
        lora_scale, lora_alpha)."""
        device = torch.device(device) if device is not None else default_device()
        if checkpoint is None and vae is None and text_encoder is None and preset is None:
            if (WEIGHTS_DIR / "dit.safetensors").is_file():
                # bf16 by default even on CPU: the small DiT runs ~1.6x faster (AVX512-BF16 / AMX)
                return cls.load_default(device=device, dtype=dtype or torch.bfloat16)
        dtype = dtype or default_dtype(device)
        preset = preset or "tiny"
        notes = []
        if checkpoint is not None:
            from streamer.models.loader import load_model

            model = load_model(checkpoint, device=device, dtype=dtype, **(checkpoint_options or {}))
            notes.append(f"DiT {checkpoint}")
        else:
            torch.manual_seed(seed)
            model = CausalWanModel(get_config(preset)).to(device=device, dtype=dtype)
            notes.append(f"random {preset} DiT (no trained weights)")
        model.eval().requires_grad_(False)
        cfg = model.config

        if vae is not None:
            decoder = StreamingWanDecoder.from_pretrained(vae, device=device, dtype=dtype)
            notes.append(f"VAE {vae}")
        else:
            decoder = StreamingWanDecoder.random_tiny(seed=seed + 1, device=device, dtype=dtype)
            notes.append("random tiny VAE")

        if text_encoder is not None:
            enc = UMT5TextEncoder.from_pretrained(text_encoder, device=device, dtype=dtype)
            notes.append(f"umT5 {text_encoder}")
        else:
            enc = HashTextEncoder(dim=cfg.text_dim, text_len=cfg.text_len)
            notes.append("hash text encoder (prompts carry no meaning)")
        if getattr(enc, "dim", cfg.text_dim) != cfg.text_dim:
            raise ValueError(f"text encoder width {enc.dim} does not match the DiT's text_dim {cfg.text_dim}")
        random = checkpoint is None
        return cls(model=model, decoder=decoder, text_encoder=CachedTextEncoder(enc), device=device, dtype=dtype,
                   description="; ".join(notes), is_random=random,
                   native_size=(832, 480) if checkpoint is not None else (320, 192))

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
                   trajectory_encoder=TrajectoryEncoder(cfg.track_channels),
                   stream_defaults=json.loads(meta.get("stream", '{"policy": "window", "policy_args": {"window": 12}}')))
        if warmup:  # first calls into oneDNN convs/matmuls are slow: pay that at load, not at the first frame
            with torch.inference_mode():
                pipe.decoder.decode(torch.zeros(1, 16, 1, 16, 16, device=device))
                pipe.decoder.reset()
        return pipe
