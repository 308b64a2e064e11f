"""A tiny autoencoder with the Wan latent layout, and its TAEHV-style streaming decoder.

Layout (same as Wan's VAE, so every shape downstream is the real model's): 16 latent channels,
spatial stride 8, temporal stride 4, 1 + 4k video frames -> 1 + k latent frames. As in TAEHV the
first frame is repeated 3 times in front, so every latent frame covers 4 video frames and the
decoder simply drops the first 3 frames it makes.

Decoder: per latent frame, MemBlocks at latent resolution (each block sees its own input from the
previous latent frame: the memory that makes it causal and streaming), then TGrow (one 1x1 conv
makes 4 frames' features) and a small per-frame upsampler. The memory is carried across `decode`
calls, so a stream decodes each latent exactly once. Latents are normalised (zero mean, unit
std per channel over the training world) by buffers inside the module, so the DiT sees N(0, 1)-ish
latents and the decoder undoes the normalisation itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from streamer.models.frames import FrameRule


@dataclass(frozen=True)
class TinyVAEConfig:
    z_dim: int = 16
    enc: tuple[int, ...] = (32, 48, 64)   # channels after each stride-2 stage (3 stages = stride 8)
    dec: tuple[int, ...] = (64, 48, 32, 16)  # latent-res width, then after each 2x upsample
    mem_blocks: int = 2
    temporal: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


# world-128-z32: twice the latent channels at the same grid (the DiT's cost barely changes: only its
# patch embedding and head see them), tried to lift the shipped autoencoder's blur (docs/model_history.md, "After
# v8, part 3"); a DiT for it needs in_channels = out_channels = 32.
PRESETS = {"world-128": TinyVAEConfig(), "world-128-z32": TinyVAEConfig(z_dim=32)}


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2)


class MemBlock(nn.Module):
    """TAEHV's MemBlock: a residual conv block that also sees its input from the previous time step."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = conv(2 * c, c)
        self.conv2 = conv(c, c)

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(torch.cat([x, mem], 1))))


class Encoder(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        layers, cin = [], 3
        for c in cfg.enc:
            layers += [conv(cin, c, 3, 2), nn.ReLU()]
            cin = c
        self.frame = nn.Sequential(*layers, conv(cin, cin))
        self.pool = nn.Sequential(conv(cin * cfg.temporal, cin, 1), nn.ReLU(), conv(cin, cin), nn.ReLU(),
                                  conv(cin, cfg.z_dim))
        self.t = cfg.temporal

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, 1+4k, H, W] in [-1, 1] -> raw latents [B, z, 1+k, H/8, W/8]."""
        b, _, n, h, w = video.shape
        if (n - 1) % self.t:
            raise ValueError(f"{n} frames: the latent layout needs 1 + {self.t}k frames")
        video = torch.cat([video[:, :, :1].expand(-1, -1, self.t - 1, -1, -1), video], 2)  # TAEHV front padding
        f = self.frame(video.transpose(1, 2).flatten(0, 1))  # [B*T, C, h, w]
        f = f.unflatten(0, (b, -1))  # [B, T, C, h, w]
        f = f.unflatten(1, (-1, self.t)).flatten(2, 3)  # [B, L, 4C, h, w]  (TPool: frames stacked on channels)
        z = self.pool(f.flatten(0, 1)).unflatten(0, (b, -1))  # [B, L, z, h, w]
        return z.transpose(1, 2)


class Decoder(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        c0 = cfg.dec[0]
        self.conv_in = conv(cfg.z_dim, c0)
        self.mem = nn.ModuleList([MemBlock(c0) for _ in range(cfg.mem_blocks)])
        self.grow = conv(c0, c0 * cfg.temporal, 1)  # TGrow: one latent frame -> 4 frames of features
        ups = []
        for cin, cout in zip(cfg.dec[:-1], cfg.dec[1:]):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, cout), nn.ReLU()]
        self.up = nn.Sequential(*ups, conv(cfg.dec[-1], 3))
        self.t = cfg.temporal

    def step(self, z: torch.Tensor, state: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One latent frame z [B, z, h, w] -> 4 frames [B, 4, 3, H, W] and the new memory."""
        x = F.relu(self.conv_in(z))
        new_state = []
        for i, blk in enumerate(self.mem):
            mem = state[i] if state is not None else torch.zeros_like(x)
            new_state.append(x)
            x = F.relu(blk(x, mem))
        g = self.grow(x).unflatten(1, (self.t, -1))  # [B, 4, C, h, w]
        out = self.up(g.flatten(0, 1)).unflatten(0, (z.shape[0], self.t))
        return out, new_state

    def forward(self, z: torch.Tensor, state: list[torch.Tensor] | None = None, first: bool = True
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latents [B, z, L, h, w] -> video [B, 3, N, H, W] (N = 4L, minus 3 when `first`), memory."""
        frames = []
        for i in range(z.shape[2]):
            out, state = self.step(z[:, :, i], state)
            frames.append(out[:, self.t - 1 :] if first and i == 0 else out)
        return torch.cat(frames, 1).transpose(1, 2), state


class TinyVAE(nn.Module):
    def __init__(self, cfg: TinyVAEConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or TinyVAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # latent normalisation measured on the world after training (identity until then)
        self.register_buffer("latent_mean", torch.zeros(cfg.z_dim))
        self.register_buffer("latent_std", torch.ones(cfg.z_dim))

    def _view(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, 1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, 1+4k, H, W] in [-1, 1] -> normalised latents [B, 16, 1+k, H/8, W/8]."""
        return (self.encoder(video) - self._view(self.latent_mean)) / self._view(self.latent_std)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self._view(self.latent_std) + self._view(self.latent_mean)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video [B, 3, 1+4(L-1), H, W] (whole clip, not streaming)."""
        return self.decoder(self.denormalize(z))[0]

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> TinyVAE:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        cfg = TinyVAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in __import__("json").loads(meta.get("config", "{}")).items()})
        vae = cls(cfg)
        vae.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def save(self, path: str | Path, half: bool = True) -> None:
        import json

        from safetensors.torch import save_file

        sd = {k: (v.half() if half and v.is_floating_point() and "latent_" not in k else v).contiguous()
              for k, v in self.state_dict().items()}
        save_file(sd, str(path), metadata={"config": json.dumps(self.config.to_dict()), "kind": "tiny-vae"})


@dataclass
class TinyDecoderState:
    """One stream's decoder state: each MemBlock's memory of the previous latent frame, and how
    many latent frames the stream has decoded."""

    memory: list[torch.Tensor] | None = None
    latent_frames: int = 0


class TinyStreamingDecoder:
    """`StreamingWanDecoder`'s interface over the tiny decoder: `new_state()` per stream, then
    `decode(latents, state)` in [-1, 1] with the memory carried in the state (each latent decoded
    once). Holds weights only, so streams share it."""

    def __init__(self, vae: TinyVAE):
        self.vae = vae.eval().requires_grad_(False)
        self.frames = FrameRule(vae.config.temporal)

    @property
    def device(self) -> torch.device:
        return self.vae.latent_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.latent_mean.dtype

    @property
    def spatial_stride(self) -> int:
        return 2 ** len(self.vae.config.enc)

    def new_state(self) -> TinyDecoderState:
        return TinyDecoderState()

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, N, H, W] in [-1, 1], N = 1 + 4k frames -> normalised latents [B, 16, 1 + k, H/8, W/8]
        float32 on this decoder's device (the autoencoder's own encoder and latent normalisation:
        the DiT's latent space, ready as a Session's `start_latents`). Raises ValueError for a shape
        that is not [B, 3, 1 + 4k, H, W] with H, W multiples of 8."""
        n, s = (video.shape[2], self.spatial_stride) if video.ndim == 5 else (0, 1)
        if video.ndim != 5 or video.shape[1] != 3 or n < 1 or self.frames.encodable(n) != n \
                or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"expected video [B, 3, 1+{self.frames.temporal_stride}k, H, W] with H, W multiples "
                             f"of {s}, got {tuple(video.shape)}")
        return self.vae.encode(video.to(device=self.device, dtype=self.dtype)).float()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, state: TinyDecoderState) -> torch.Tensor:
        """latents [B, 16, F, h, w] (normalised) -> video [B, 3, N, H, W] float32 in [-1, 1], `state`
        carried forward in place; N = 4F, or 4F - 3 when this call holds the stream's first latent
        frame (`frames`). Raises ValueError for latents of the wrong shape."""
        if latents.ndim != 5 or latents.shape[1] != self.vae.config.z_dim or latents.shape[2] == 0:
            raise ValueError(f"expected latents [B, {self.vae.config.z_dim}, F>0, h, w], got {tuple(latents.shape)}")
        z = self.vae.denormalize(latents.to(device=self.device, dtype=self.dtype))
        out, state.memory = self.vae.decoder(z, state.memory, first=state.latent_frames == 0)
        state.latent_frames += latents.shape[2]
        return out.clamp(-1.0, 1.0).float()
