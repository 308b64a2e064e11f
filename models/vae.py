"""Streaming decode with the Wan VAE (diffusers' `AutoencoderKLWan`).

The Wan decoder is causal in time: each causal conv keeps the last frames it saw in a feature
cache (`vae._feat_map`). diffusers' own `_decode` clears that cache, then feeds one latent frame at
a time. We do the same, but carry the cache across calls, so a stream decodes each chunk exactly
once and the result is bit-identical to decoding the whole video in one go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

from streamer.models.frames import FrameRule, video_to_uint8  # noqa: F401 (part of this module's API)


class VAELoadError(ValueError):
    """A path that does not hold a Wan VAE in any layout we accept."""


def tiny_vae_config() -> dict:
    """Keyword arguments for a tiny random `AutoencoderKLWan` (tests, the random default model).

    Keeps the real strides (spatial 8, temporal 4) and latent channels (16), so every shape
    downstream is the one a real checkpoint gives.
    """
    return dict(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
    )


def load_wan_vae(path: str | Path) -> AutoencoderKLWan:
    """A diffusers VAE folder, a pipeline folder with `vae/`, or one original-Wan weights file
    (`Wan2.1_VAE.pth`, or the same keys as `.safetensors`) -> `AutoencoderKLWan` on the CPU."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return AutoencoderKLWan.from_pretrained(path, local_files_only=True)
        if (path / "vae" / "config.json").is_file():
            return AutoencoderKLWan.from_pretrained(path, subfolder="vae", local_files_only=True)
        raise VAELoadError(f"{path} is neither a diffusers VAE folder (config.json) nor a pipeline folder (vae/)")
    if path.is_file():
        return _load_single_file(path)
    raise VAELoadError(f"no VAE at {path}: expected a folder or a Wan2.1_VAE.pth file")


def _load_single_file(path: Path) -> AutoencoderKLWan:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(path)
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise VAELoadError(f"{path}: unknown VAE file type {path.suffix!r} (expected .pth or .safetensors)")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise VAELoadError(f"{path} does not hold a state dict of tensors")
    if "decoder.conv_in.weight" not in sd:  # original Wan key names: convert (already-diffusers keys pass)
        sd = convert_wan_vae_to_diffusers(sd)
    # The converter only knows the Wan2.1 layout, which is AutoencoderKLWan's default config.
    # Build on the meta device: allocating 127M random weights only to overwrite them is wasted time.
    with torch.device("meta"):
        vae = AutoencoderKLWan()
    expected = set(vae.state_dict())
    if set(sd) != expected:
        missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
        raise VAELoadError(
            f"{path} is not a Wan2.1 VAE checkpoint: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    vae.load_state_dict(sd, assign=True)
    return vae


def _move(vae: AutoencoderKLWan, device: str | torch.device, dtype: torch.dtype) -> AutoencoderKLWan:
    # The Wan VAE keeps no module in fp32, yet diffusers' `ModelMixin.to` warns about that (empty)
    # list on every dtype cast; plain `nn.Module.to` does the same cast without the noise.
    return torch.nn.Module.to(vae, device=device, dtype=dtype)


@dataclass
class WanDecoderState:
    """One stream's decoder state: the causal convs' feature cache (diffusers' `feat_cache` list, one
    entry per causal conv) and how many latent frames the stream has decoded."""

    feat_cache: list = field(default_factory=list)
    latent_frames: int = 0


class StreamingWanDecoder:
    """Decodes a stream of latent chunks, one latent frame at a time, never re-decoding a latent.

    The stream's first latent frame yields 1 video frame, each later one 4 (81 frames = 21 latents;
    `frames` has the rule). Latents come in the DiT's normalised space; the VAE config's
    `latents_mean`/`latents_std` undo that here, as diffusers' WanPipeline does before `vae.decode`.
    The decoder holds weights only: each stream brings its own `new_state()`, so any number of
    streams can share it, interleaved in any order.
    """

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae.eval().requires_grad_(False)
        p = next(vae.parameters())
        z = vae.config.z_dim
        # WanPipeline divides by 1/std rather than multiplying by std; keep its exact arithmetic.
        self._mean = torch.tensor(vae.config.latents_mean, dtype=p.dtype, device=p.device).view(1, z, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=p.dtype, device=p.device).view(1, z, 1, 1, 1)
        vae.clear_cache()  # counts the decoder's causal convs (diffusers' own bookkeeping)
        self._num_convs = len(vae._feat_map)
        self.frames = FrameRule(2 ** sum(vae.temperal_downsample))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> StreamingWanDecoder:
        return cls(_move(load_wan_vae(path), device, dtype))

    @classmethod
    def random_tiny(
        cls, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> StreamingWanDecoder:
        """A tiny randomly initialised decoder (no weights to download): shapes right, pixels noise."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**tiny_vae_config())
        return cls(_move(vae, device, dtype))

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self._mean.dtype

    @property
    def spatial_stride(self) -> int:
        return self.vae.spatial_compression_ratio

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, N, H, W] in [-1, 1], N = 1 + 4k frames -> normalised latents [B, z, 1 + k, H/8, W/8]
        float32 on this decoder's device: the DiT's latent space, ready as a Session's `start_latents`.

        diffusers' `AutoencoderKLWan.encode(x).latent_dist.mode()` (the posterior mean, no sampling,
        so an image always gives the same latents), then `(z - latents_mean) / latents_std` as
        WanImageToVideoPipeline normalises its image condition. The encoder keeps its own causal
        cache for the call (diffusers clears it first); no stream's decoder state is touched.
        Raises ValueError for a shape that is not [B, 3, 1 + 4k, H, W] with H, W multiples of 8.
        """
        n, s = (video.shape[2], self.spatial_stride) if video.ndim == 5 else (0, 1)
        if video.ndim != 5 or video.shape[1] != 3 or n < 1 or self.frames.encodable(n) != n \
                or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"expected video [B, 3, 1+{self.frames.temporal_stride}k, H, W] with H, W multiples "
                             f"of {s}, got {tuple(video.shape)}")
        z = self.vae.encode(video.to(device=self.device, dtype=self.dtype)).latent_dist.mode()
        return ((z - self._mean) * self._inv_std).float()

    def new_state(self) -> WanDecoderState:
        """The state of a new stream (empty feature cache)."""
        return WanDecoderState(feat_cache=[None] * self._num_convs)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, state: WanDecoderState) -> torch.Tensor:
        """latents [B, z, F, h, w] (normalised) -> video [B, 3, N, H, W] float32 in [-1, 1]; `state`
        (the stream's, from `new_state()`) is carried forward in place.

        N = `frames.video_frames(F, first=...)`: 4F, or 4F - 3 when this call holds the stream's first
        latent frame. Raises ValueError for latents of the wrong shape.
        """
        if latents.ndim != 5 or latents.shape[1] != self.vae.config.z_dim or latents.shape[2] == 0:
            raise ValueError(f"expected latents [B, {self.vae.config.z_dim}, F>0, h, w], got {tuple(latents.shape)}")
        vae = self.vae
        z = latents.to(device=self.device, dtype=self.dtype) / self._inv_std + self._mean
        # post_quant_conv is a 1x1x1 conv: applying it per call equals applying it to the whole video.
        x = vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            # each frame walks the cache from its first conv, as diffusers' `_decode` does
            frames.append(vae.decoder(x[:, :, i : i + 1], feat_cache=state.feat_cache, feat_idx=[0],
                                      first_chunk=state.latent_frames == 0))
            state.latent_frames += 1
        out = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0).float()
