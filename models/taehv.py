"""TAEHV, the tiny autoencoder for Wan 2.1 latents (madebyollin/taehv, `taew2_1.pth`), as a streaming decoder.

TAEHV decodes Wan latents an order of magnitude faster than Wan's own VAE (about 9.8M decoder
parameters, 2D convs only): MotionStream reached 29.5 FPS end to end with it. This module builds
TAEHV's architecture with exactly its `nn.Sequential` indices, so the public files load strictly
(`decoder.1.weight`, `decoder.3.conv.0.weight`, `decoder.7.conv.weight`, ...), and exposes the
project's streaming-decoder interface (`new_state()`, `decode(latents, state)`, `encode(video)`,
`frames`), like `StreamingWanDecoder` (models/vae.py) and `TinyStreamingDecoder` (models/tiny_vae.py).

Architecture (taehv.py at madebyollin/taehv; written from its definition, not copied):
- decoder = Sequential(
      0 Clamp (tanh(x / 3) * 3), 1 conv3x3(16 -> 256), 2 ReLU,
      3-5 MemBlock(256), 6 Upsample(x2), 7 TGrow(256, 1), 8 conv3x3(256 -> 128, no bias),
      9-11 MemBlock(128), 12 Upsample(x2), 13 TGrow(128, 2), 14 conv3x3(128 -> 64, no bias),
      15-17 MemBlock(64), 18 Upsample(x2), 19 TGrow(64, 2), 20 conv3x3(64 -> 64, no bias),
      21 ReLU, 22 conv3x3(64 -> 3 * patch^2))
  widths (256, 128, 64, 64); 64 tensors. `decoder_time_upscale` (default (False, True, True)) sets
  each TGrow's stride, `decoder_space_upscale` (default all True) each Upsample's factor (1 or 2).
- encoder = Sequential(0 conv3x3(3 * patch^2 -> 64), 1 ReLU,
      2 TPool(64, 2), 3 conv3x3 stride 2 (no bias), 4-6 MemBlock(64),
      7 TPool(64, 2), 8 conv stride 2, 9-11 MemBlock(64),
      12 TPool(64, 1), 13 conv stride 2, 14-16 MemBlock(64), 17 conv3x3(64 -> 16))
  (`encoder_time_downscale` (True, True, False): the TPool strides); 64 tensors.
- MemBlock(c): relu(conv(cat[x, past]) + x), conv = Sequential(conv3x3(2c -> c), ReLU, conv3x3,
  ReLU, conv3x3) (keys conv.0 / conv.2 / conv.4; a 1x1 `skip` only when widths differ, never in
  the base model); `past` is the block's own input at the previous time step (zeros at the start).
- TGrow(c, s): a 1x1 conv c -> s*c, then each frame's channels split into s frames in order.
  TPool(c, s): s consecutive frames stacked on channels, then a 1x1 conv s*c -> c.
  A file with a TGrow wider than the configured stride is cut to its last-timestep output channels,
  as TAEHV's `patch_tgrow_layers` does (how `decoder_time_upscale=(False, False)` previews load).

Frames: 3 TGrows of stride (1, 2, 2) make 4 frames per latent frame; TAEHV drops the first
t_upscale - 1 = 3 frames it makes (`frames_to_trim`), so L latent frames give 4L - 3 = 1 + 4(L - 1)
video frames, Wan's rule (81 frames = 21 latents). Its encoder pads the clip at the END with
copies of the last frame up to a multiple of 4 (1 + 4k frames -> k + 1 latents).

Latent space: TAEHV takes and gives the latents the diffusion model itself uses, i.e. Wan's
NORMALISED latents (`(z - latents_mean) / latents_std` of diffusers' `AutoencoderKLWan` config),
not the raw VAE latents. Sources: the taehv README ("TAEHV does not use any latent scales /
shifts (TAEHV encodes / decodes exactly what diffusion models use), whereas Diffusers requires
explicitly applying a latents_mean and latents_std"), its examples/TAEW2.1_T2I_Demo.ipynb, whose
diffusers wrapper sets latents_mean = zeros(16) and latents_std = ones(16) so WanPipeline hands
the DiT's latents over unchanged, and its examples/test_latents_wan.pth (per-channel mean within
+-0.8, std 0.6-1.2: normalised, not Wan's raw means of up to 1.55 and stds of up to 3.3). So this
decoder applies no mean/std: the DiT's latents go in as they are. Pixels: TAEHV works in [0, 1]
NTCHW; this interface is [-1, 1] NCTHW, like the Wan VAE's.

Note: Hunyuan's `taehv.pth` has the same shapes as `taew2_1.pth` (16 channels), so no loader can
tell them apart; decoding Wan latents with it gives wrong colours. `taew2_2` (48 channels, patch 2)
loads but does not fit a 16-channel DiT; the `_super` variants (another decoder) are refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from streamer.models.errors import CheckpointError
from streamer.models.frames import FrameRule

ENCODER_WIDTH = 64
DECODER_WIDTHS = (256, 128, 64, 64)  # TAEHV's base decoder (taehv.py hard-codes these widths)
# Sequential indices of TAEHV's base decoder / encoder (fixed by its construction order).
DECODER_TGROWS = (7, 13, 19)
ENCODER_TPOOLS = (2, 7, 12)


@dataclass(frozen=True)
class TAEHVConfig:
    """TAEHV's options. Defaults: taew2_1 (Wan 2.1 latents: 16 channels, no pixel patching)."""

    latent_channels: int = 16
    patch_size: int = 1  # pixel (un)shuffle of the RGB frames (2 for taew2_2 / taehv1_5)
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)
    decoder_space_upscale: tuple[bool, bool, bool] = (True, True, True)

    @property
    def t_downscale(self) -> int:
        return 2 ** sum(self.encoder_time_downscale)

    @property
    def t_upscale(self) -> int:
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def frames_to_trim(self) -> int:
        """Frames TAEHV drops at the start of a decode (its causal alignment with the Wan VAE)."""
        return self.t_upscale - 1

    @property
    def spatial_upscale(self) -> int:
        return 2 ** sum(self.decoder_space_upscale) * self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def conv(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual conv block that also sees its own input at the previous time step (`past`)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * c_in, c_out), nn.ReLU(), conv(c_out, c_out), nn.ReLU(), conv(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """`stride` consecutive frames [B*T, C, H, W] -> [B*T/stride, C, H, W] (frames stacked on channels, 1x1 conv)."""

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c * stride, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))


class TGrow(nn.Module):
    """Frames [B*T, C, H, W] -> [B*T*stride, C, H, W]: a 1x1 conv to stride*C channels, split into frames in order."""

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c, c * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Apply TAEHV's Sequential to a clip x [B, T, C, H, W] in parallel over time -> [B, T', C', H', W'].

    Each MemBlock i sees, as `past`, its own input one time step earlier: inside the clip the
    previous frame, before it `memory[i]` [B, C, H, W] (the last input of the previous call of the
    same stream), or zeros when there is none (memory None: a whole clip; an empty dict: a stream's
    start). `memory` is updated in place, so decoding a stream call by call equals decoding it whole
    (TAEHV's `apply_model_with_memblocks` parallel mode, with the memory carried across calls).
    Raises ValueError when `memory` holds another batch or frame size than x.
    """
    b = x.shape[0]
    x = x.flatten(0, 1)
    for i, block in enumerate(blocks):
        if isinstance(block, MemBlock):
            xs = x.unflatten(0, (b, -1))  # [B, T, C, H, W]
            prev = memory.get(i) if memory is not None else None
            if prev is None:
                prev = xs.new_zeros(xs[:, 0].shape)
            elif prev.shape != xs[:, 0].shape:
                raise ValueError(f"latents {tuple(xs[:, 0].shape)} at block {i} do not continue this stream "
                                 f"(it holds {tuple(prev.shape)}): use a new state for another batch or size")
            past = torch.cat([prev[:, None], xs[:, :-1]], 1).flatten(0, 1)
            if memory is not None:
                memory[i] = xs[:, -1].clone()  # a copy: keeps the whole chunk's activations from staying alive
            x = block(x, past)
        else:
            x = block(x)
    return x.unflatten(0, (b, -1))


class TAEHV(nn.Module):
    """TAEHV's base encoder and decoder, key for key (see the module docstring)."""

    def __init__(self, config: TAEHVConfig | None = None):
        super().__init__()
        self.config = cfg = config or TAEHVConfig()
        rgb = 3 * cfg.patch_size ** 2
        e, z = ENCODER_WIDTH, cfg.latent_channels
        enc: list[nn.Module] = [conv(rgb, e), nn.ReLU()]
        for down in cfg.encoder_time_downscale:
            enc += [TPool(e, 2 if down else 1), conv(e, e, stride=2, bias=False), MemBlock(e, e), MemBlock(e, e),
                    MemBlock(e, e)]
        self.encoder = nn.Sequential(*enc, conv(e, z))
        n = DECODER_WIDTHS
        dec: list[nn.Module] = [Clamp(), conv(z, n[0]), nn.ReLU()]
        for k in range(3):
            dec += [MemBlock(n[k], n[k]), MemBlock(n[k], n[k]), MemBlock(n[k], n[k]),
                    nn.Upsample(scale_factor=2 if cfg.decoder_space_upscale[k] else 1),
                    TGrow(n[k], 2 if cfg.decoder_time_upscale[k] else 1), conv(n[k], n[k + 1], bias=False)]
        self.decoder = nn.Sequential(*dec, nn.ReLU(), conv(n[3], rgb))

    def decode_frames(self, z: torch.Tensor, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Latents z [B, L, C, h, w] -> every frame the decoder makes [B, L * t_upscale, 3, H, W] in [0, 1]
        (nothing trimmed); `memory` as in `run_blocks`."""
        x = run_blocks(self.decoder, z, memory)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x.flatten(0, 1), self.config.patch_size).unflatten(0, x.shape[:2])
        return x.clamp(0, 1)

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Frames [B, N, 3, H, W] in [0, 1] -> latents [B, ceil(N / t_downscale), C, H/8, W/8]; the clip is
        padded at the end with copies of its last frame up to a multiple of t_downscale, as TAEHV does."""
        p, t = self.config.patch_size, self.config.t_downscale
        if p > 1:
            video = F.pixel_unshuffle(video.flatten(0, 1), p).unflatten(0, video.shape[:2])
        if video.shape[1] % t:
            video = torch.cat([video, video[:, -1:].expand(-1, t - video.shape[1] % t, -1, -1, -1)], 1)
        return run_blocks(self.encoder, video)


# ---- loading TAEHV files ----------------------------------------------------------------------
def _stride(sd: dict, key: str, width: int, axis: int) -> bool | None:
    """Whether the 1x1 conv `key` of a TPool/TGrow of `width` has stride 2 in the file (None: unknown)."""
    t = sd.get(key)
    if not isinstance(t, torch.Tensor) or t.ndim != 4:
        return None
    return {width: False, 2 * width: True}.get(t.shape[axis])


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> TAEHVConfig:
    """The config a TAEHV state dict was saved from, read off its shapes (latent channels, patch size,
    time strides). Best effort: whatever cannot be read keeps taew2_1's value, and the strict key and
    shape check that follows names what does not fit."""
    default = TAEHVConfig()
    first, last = sd.get("decoder.1.weight"), sd.get("decoder.22.weight")
    z = first.shape[1] if isinstance(first, torch.Tensor) and first.ndim == 4 else default.latent_channels
    rgb = last.shape[0] if isinstance(last, torch.Tensor) and last.ndim == 4 else 3  # 3 * patch^2
    p = max(math.isqrt(rgb // 3), 1)
    p = p if 3 * p * p == rgb else 1
    enc = tuple(_stride(sd, f"encoder.{i}.conv.weight", ENCODER_WIDTH, 1) for i in ENCODER_TPOOLS)
    dec = tuple(_stride(sd, f"decoder.{i}.conv.weight", DECODER_WIDTHS[k], 0) for k, i in enumerate(DECODER_TGROWS))
    return TAEHVConfig(
        latent_channels=z, patch_size=p,
        encoder_time_downscale=tuple(d if s is None else s for s, d in zip(enc, default.encoder_time_downscale)),
        decoder_time_upscale=tuple(d if s is None else s for s, d in zip(dec, default.decoder_time_upscale)))


def _not_taehv(path: Path, sd: dict, expected: dict) -> str | None:
    """One line saying how `sd` differs from TAEHV's layout, or None when every key and shape fits."""
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and sd[k].shape != v.shape]
    parts = [f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
             for what, items in (("missing keys", missing), ("unexpected keys", extra), ("tensors of another shape", shapes))
             if items]
    if not parts:
        return None
    hint = "; the _super variants are not supported" if "decoder.1.conv.0.weight" in sd else ""
    return (f"{path} is not a TAEHV checkpoint (madebyollin/taehv's taew2_1.pth layout{hint}): "
            + ", ".join(parts))


def load_taehv(path: str | Path, decoder_time_upscale: tuple[bool, ...] | None = None,
               decoder_space_upscale: tuple[bool, bool, bool] | None = None) -> TAEHV:
    """A TAEHV `.pth` (or its `.safetensors` conversion) -> `TAEHV` in fp32 on the CPU, loaded strictly.

    The config is read off the file's shapes (taew2_1: 16 channels, TGrow strides (1, 2, 2)).
    decoder_time_upscale / decoder_space_upscale: TAEHV's cheaper-preview options (2 or 3 flags;
    time upscaling can only be turned off where the file has it). Raises CheckpointError (one line)
    for a file that cannot be read, is an unsafe pickle, or is not TAEHV-shaped.
    """
    from streamer.models.loader import _check_values, _read_file  # the project's one reader of weight files

    path = Path(path)
    sd = _read_file(path)
    cfg = config_from_state_dict(sd)
    if decoder_time_upscale is not None:
        want = tuple(decoder_time_upscale)
        want = (False, *want) if len(want) == 2 else want  # TAEHV's 2-flag form leaves the first TGrow at 1
        if len(want) != 3 or any(w and not have for w, have in zip(want, cfg.decoder_time_upscale)):
            raise CheckpointError(f"decoder_time_upscale {tuple(decoder_time_upscale)}: give 2 or 3 flags, True only "
                                  f"where {path.name} upscales time {cfg.decoder_time_upscale}")
        cfg = TAEHVConfig(**{**cfg.to_dict(), "decoder_time_upscale": want})
    if decoder_space_upscale is not None:
        if len(tuple(decoder_space_upscale)) != 3:
            raise CheckpointError(f"decoder_space_upscale {tuple(decoder_space_upscale)}: give 3 flags")
        cfg = TAEHVConfig(**{**cfg.to_dict(), "decoder_space_upscale": tuple(map(bool, decoder_space_upscale))})
    with torch.device("meta"):  # shapes only: every tensor is replaced by the file's
        model = TAEHV(cfg)
    expected = model.state_dict()
    for i in DECODER_TGROWS:  # a TGrow switched off keeps the last-timestep output channels (TAEHV's rule)
        key = f"decoder.{i}.conv.weight"
        t = sd.get(key)
        if isinstance(t, torch.Tensor) and t.ndim == 4 and t.shape[0] > expected[key].shape[0] \
                and t.shape[1:] == expected[key].shape[1:]:
            sd[key] = t[-expected[key].shape[0]:]
    problem = _not_taehv(path, sd, expected)
    if problem:
        raise CheckpointError(problem)
    _check_values(expected, sd, path)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


_TAEHV_KEY = re.compile(r"^decoder\.\d+\.")


def is_taehv_file(path: str | Path) -> bool:
    """Whether `path` is meant as a TAEHV file rather than a Wan VAE: a file whose decoder keys are
    numbered Sequential indices (`decoder.1.weight`; Wan's are named: `decoder.conv_in`,
    `decoder.conv1`), or whose name starts with "tae" (so a broken taew2_1.pth gets TAEHV's error)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.name.lower().startswith("tae"):
        return True
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
        else:  # mmap: only the pickle's key list is read, not a 500 MB Wan VAE's tensors
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            keys = list(obj) if isinstance(obj, dict) else []
    except Exception:  # unreadable here: the Wan VAE loader reports it in its own words
        return False
    return any(isinstance(k, str) and _TAEHV_KEY.match(k) for k in keys)


# ---- the streaming decoder --------------------------------------------------------------------
@dataclass
class TAEHVState:
    """One stream's decoder state: each decoder MemBlock's input at the stream's last time step
    (Sequential index -> [B, C, h, w] at that block's resolution), and latent frames decoded so far."""

    memory: dict[int, torch.Tensor] = field(default_factory=dict)
    latent_frames: int = 0


class TAEHVDecoder:
    """The streaming-decoder interface over TAEHV: `new_state()` per stream, then `decode(latents,
    state)` chunk by chunk with the MemBlocks' memory carried in the state, so each latent is decoded
    once and the frames equal one decode of the whole sequence. Holds weights only: any number of
    streams share it, interleaved in any order.

    pass_frames: latent frames run through the network at once (None: the whole call). Fewer bound
    the activations (about 0.6 KB per output pixel and frame in fp16 at 832x480) at a small cost in
    speed; the frames are the same.
    """

    def __init__(self, taehv: TAEHV, pass_frames: int | None = None):
        self.taehv = taehv.eval().requires_grad_(False)
        self.config = taehv.config
        self.frames = FrameRule(self.config.t_upscale)
        self.pass_frames = pass_frames

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  **options) -> TAEHVDecoder:
        """Load `taew2_1.pth` (or any base-TAEHV file); options: `load_taehv`'s. Raises CheckpointError."""
        return cls(load_taehv(path, **options).to(device=device, dtype=dtype))

    @classmethod
    def random(cls, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               config: TAEHVConfig | None = None) -> TAEHVDecoder:
        """A randomly initialised TAEHV at taew2_1's size (timing without the weights; pixels are noise)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TAEHV(config)
        return cls(model.to(device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return next(self.taehv.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.taehv.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent along H and W (8 for taew2_1; the encoder's, which the decoder matches
        unless spatial upscaling is switched off)."""
        return 8 * self.config.patch_size

    def new_state(self) -> TAEHVState:
        return TAEHVState()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, state: TAEHVState) -> torch.Tensor:
        """latents [B, C, F, h, w] (Wan's normalised latents, as the DiT makes them) -> video
        [B, 3, N, 8h, 8w] float32 in [-1, 1]; `state` (from `new_state()`) carried forward in place.
        N = `frames.video_frames(F, first=...)`: 4F, or 4F - 3 when the call holds the stream's first
        latent frame (TAEHV's first 3 frames are dropped). Raises ValueError for latents of the wrong
        shape, or of another batch or size than the stream's earlier calls."""
        c = self.config.latent_channels
        if latents.ndim != 5 or latents.shape[1] != c or latents.shape[2] == 0:
            raise ValueError(f"expected latents [B, {c}, F>0, h, w], got {tuple(latents.shape)}")
        z = latents.to(device=self.device, dtype=self.dtype).transpose(1, 2)  # TAEHV is NTCHW
        step = self.pass_frames or z.shape[1]
        outs = [self.taehv.decode_frames(z[:, i : i + step], state.memory) for i in range(0, z.shape[1], step)]
        video = torch.cat(outs, 1)
        if state.latent_frames == 0:
            video = video[:, self.config.frames_to_trim :]
        state.latent_frames += z.shape[1]
        return video.transpose(1, 2).float().mul(2).sub(1)

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, N, H, W] in [-1, 1], N = 1 + 4k frames -> normalised latents [B, C, 1 + k, H/8, W/8]
        float32 on this decoder's device (TAEHV's encoder: the DiT's latent space, ready as a
        Session's `start_latents`). Raises ValueError for a shape that is not [B, 3, 1 + 4k, H, W]
        with H, W multiples of 8."""
        rule, s = FrameRule(self.config.t_downscale), self.spatial_stride
        n = video.shape[2] if video.ndim == 5 else 0
        if video.ndim != 5 or video.shape[1] != 3 or n < 1 or rule.encodable(n) != n \
                or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"expected video [B, 3, 1+{rule.temporal_stride}k, H, W] with H, W multiples "
                             f"of {s}, got {tuple(video.shape)}")
        x = video.to(device=self.device, dtype=self.dtype).transpose(1, 2).add(1).div(2)
        return self.taehv.encode_frames(x).transpose(1, 2).float()
