"""The loaded parts of a streamer: DiT, text encoder, streaming decoder, on one device.

`Pipeline.load()` with no paths gives the default model. Until the project's trained default
model ships, that is a small *random* model (it produces noise-like video, at full speed) and
`Pipeline.description` says so; with `checkpoint`, `vae` and `text_encoder` paths it loads real
Wan / Self-Forcing / LongLive weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.models.text import CachedTextEncoder, HashTextEncoder, UMT5TextEncoder
from streamer.models.vae import StreamingWanDecoder, video_to_uint8
from streamer.models.wan import CausalWanModel, get_config


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

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Clean latents of one chunk -> uint8 frames [N, H, W, 3] (streaming: state carried over)."""
        return video_to_uint8(self.decoder.decode(latents))[0]

    @classmethod
    def load(
        cls, checkpoint: str | Path | None = None, vae: str | Path | None = None,
        text_encoder: str | Path | None = None, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None, preset: str = "tiny", seed: int = 0,
    ) -> Pipeline:
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        notes = []
        if checkpoint is not None:
            from streamer.models.loader import load_model

            model = load_model(checkpoint, device=device, dtype=dtype)
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
