"""The Wan2.1 DiT, made causal (as in CausVid, Self-Forcing, LongLive, MotionStream).

Parameter names are those of diffusers' `WanTransformer3DModel`, so a diffusers folder loads with
`load_state_dict` and original Wan / Self-Forcing keys convert with diffusers' own converter.
What diffusers' model lacks and this one adds: per-frame timesteps, temporal RoPE positions given
from outside, block-causal attention, and a chunk forward whose self-attention is delegated to a
cache view (the model never owns the cache or the sampler).

Three forwards share one block stack and differ only in who answers self-attention:
- `forward(x, t, text)`                      bidirectional over the whole clip (Wan itself);
- `forward(x, t, text, chunk_frames=3)`      block-causal (training shape); with `clean_x` the
                                              teacher-forcing shape [clean | noisy] of Self-Forcing;
- `forward_chunk(x, t, text, view)`          one chunk against a KV cache (streaming).

The memory-bound steps of a block (LayerNorm + adaLN modulate, gated residual adds, qk RMSNorm +
RoPE) go through the dispatchers of `streamer.kernels`: fused Triton kernels on CUDA, their torch
references elsewhere (the references compute exactly what this file computed before the fusion).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from streamer.kernels import attention
from streamer.kernels import run_gated_residual, run_layernorm_modulate, run_qk_norm_rope
from streamer.models.rope import rope_cos_sin

# Self-attention answered from outside: (layer index, q, k, v) -> out, all [B, S, H, D], q/k RMS-normed.
# A callback may carry an attribute `qk_rope = (cos, sin)` ([S, head_dim / 2] each, as `rope_cos_sin`
# makes them): the model then rotates q and k by it in the same fused pass as their norm, and the
# callback receives them rotated. Without one (absent or None) q/k arrive normed but not rotated.
SelfAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    num_layers: int = 30
    num_heads: int = 12
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512  # umT5 tokens; padding is zeros and is attended, as in Wan
    in_channels: int = 16
    out_channels: int = 16
    track_channels: int = 0  # MotionStream-style trajectory channels concatenated at patchify
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    vae_stride: tuple[int, int, int] = field(default=(4, 8, 8), compare=False)
    # (gh, gw) of a learned absolute spatial position embedding added to every frame's patch tokens
    # (0, 0: none, as in Wan, whose only positions are RoPE's relative ones). The world model's rule
    # for a prompt alone ("the sprite spawns at the centre") needs to know where the centre is.
    abs_pos_grid: tuple[int, int] = (0, 0)
    # world models only: a track out of the frame is placed at its nearest edge cell with its ID
    # negated (models.trajectory_encoder, `outside`), so "a track, out of view" differs from "no
    # track" (zeros both, in MotionStream's encoding, which real checkpoints use)
    track_outside: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    def to_diffusers(self) -> dict:
        """Keyword arguments for diffusers' `WanTransformer3DModel` with the same architecture."""
        if self.track_channels:
            raise ValueError("diffusers' Wan has no trajectory channels")
        if any(self.abs_pos_grid):
            raise ValueError("diffusers' Wan has no absolute position embedding")
        return dict(
            patch_size=tuple(self.patch_size), num_attention_heads=self.num_heads, attention_head_dim=self.head_dim,
            in_channels=self.in_channels, out_channels=self.out_channels, text_dim=self.text_dim,
            freq_dim=self.freq_dim, ffn_dim=self.ffn_dim, num_layers=self.num_layers,
            cross_attn_norm=self.cross_attn_norm, qk_norm="rms_norm_across_heads", eps=self.eps,
        )

    @classmethod
    def from_diffusers(cls, cfg: dict, **overrides) -> WanConfig:
        if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
            raise ValueError("image-to-video Wan checkpoints (image_dim / added_kv_proj_dim) are not supported")
        heads, head_dim = cfg.get("num_attention_heads", 40), cfg.get("attention_head_dim", 128)
        return cls(
            dim=heads * head_dim, num_layers=cfg.get("num_layers", 40), num_heads=heads,
            ffn_dim=cfg.get("ffn_dim", 13824), freq_dim=cfg.get("freq_dim", 256), text_dim=cfg.get("text_dim", 4096),
            in_channels=cfg.get("in_channels", 16), out_channels=cfg.get("out_channels", 16),
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), cross_attn_norm=cfg.get("cross_attn_norm", True),
            eps=cfg.get("eps", 1e-6), **overrides,
        )

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, WanConfig] = {
    # Wan2.1-T2V-1.3B: Self-Forcing, CausVid, LongLive, Reward Forcing, Deep Forcing, MotionStream-1.3B.
    "wan2.1-1.3b": WanConfig(),
    # Wan2.1-T2V-14B, for loading only; streaming it needs several GPUs.
    "wan2.1-14b": WanConfig(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824),
    # Small random models for tests: same code paths, milliseconds on a CPU.
    "tiny": WanConfig(dim=64, num_layers=2, num_heads=2, ffn_dim=128, freq_dim=32, text_dim=32, text_len=16),
    # The shipped default model (streamer/weights/, recipes/default.toml): 128x128 synthetic world,
    # MiniLM text (384 wide, 32 tokens), 64 MotionStream track channels; real time on a 2-core CPU.
    "world-128": WanConfig(dim=192, num_layers=5, num_heads=3, ffn_dim=768, freq_dim=128, text_dim=384,
                           text_len=32, track_channels=64),
}


def get_config(name: str, **overrides) -> WanConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the weights' dtype (as Wan and diffusers do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class ConditionEmbedder(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, cfg.dim)
        self.time_proj = nn.Linear(cfg.dim, 6 * cfg.dim)
        self.text_embedder = TextProjection(cfg.text_dim, cfg.dim)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        # Wan's sinusoidal_embedding_1d: [cos | sin], computed in float64 as the original code does
        # (t = 1000 rad in fp32 loses ~1e-4), which is what the released checkpoints were trained with.
        half = self.freq_dim // 2
        freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
        angles = t.to(torch.float64)[..., None] * freqs
        return torch.cat([angles.cos(), angles.sin()], dim=-1).float()

    def time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps [B, F] -> temb [B, F, dim] and modulation e [B, F, 6, dim], fp32."""
        w = self.time_embedder.linear_1.weight
        temb = self.time_embedder(self.sinusoid(t).to(w.dtype)).float()
        e = self.time_proj(F.silu(temb).to(w.dtype)).float()
        return temb, e.unflatten(-1, (6, -1))


class GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class WanAttention(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.to_q = nn.Linear(cfg.dim, cfg.dim)
        self.to_k = nn.Linear(cfg.dim, cfg.dim)
        self.to_v = nn.Linear(cfg.dim, cfg.dim)
        self.to_out = nn.ModuleList([nn.Linear(cfg.dim, cfg.dim), nn.Identity()])
        # qk RMSNorm across all heads (one norm over dim, not per head)
        self.norm_q = nn.RMSNorm(cfg.dim, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(cfg.dim, eps=cfg.eps)

    def qkv(self, x: torch.Tensor, rope: Rope | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, S, H, D]; q and k normed and, when `rope` is given, rotated (one fused pass on CUDA)."""
        cos, sin = rope if rope is not None else (None, None)
        q, k = run_qk_norm_rope(self.to_q(x), self.to_k(x), self.norm_q.weight, self.norm_k.weight, cos, sin,
                                self.heads, self.norm_q.eps)
        v = self.to_v(x).unflatten(-1, (self.heads, -1))
        return q, k, v

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.norm_k(self.to_k(text)).unflatten(-1, (self.heads, -1))
        v = self.to_v(text).unflatten(-1, (self.heads, -1))
        return k, v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](o.flatten(-2))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm1 = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.attn1 = WanAttention(cfg)
        self.attn2 = WanAttention(cfg)
        self.norm2 = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)
        self.norm3 = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, text_kv: tuple[torch.Tensor, torch.Tensor],
        self_attention: SelfAttention, layer: int,
    ) -> torch.Tensor:
        """x [B, S, D] with S = F * tokens_per_frame; e [B, F, 6, D] (fp32) gives each frame its own modulation.

        norm1 / norm3 (no affine) run inside `run_layernorm_modulate`: fp32 LayerNorm, then the frame's
        scale and shift, in x's dtype; residuals are fp32 adds of the gated branch, in x's dtype."""
        q, k, v = self.attention_inputs(x, e, getattr(self_attention, "qk_rope", None))
        return self.after_attention(x, e, self_attention(layer, q, k, v), text_kv)

    # The block is split at its self-attention, the one step whose shapes follow the cache: both halves
    # see only the chunk's own tokens, so they have the same shapes at every chunk of a stream, whatever
    # the policy or cache fill (what `Pipeline.load(compile="static" | "graphs")` compiles).
    def attention_inputs(self, x: torch.Tensor, e: torch.Tensor, rope: Rope | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, S, H, D] of the chunk's tokens x [B, S, D] (modulated norm1, projections, qk-norm, RoPE)."""
        shift, scale = (self.scale_shift_table[:, None, :2] + e[:, :, :2]).unbind(2)  # [B, F, D]
        return self.attn1.qkv(run_layernorm_modulate(x, shift, scale, self.norm1.eps), rope)

    def after_attention(self, x: torch.Tensor, e: torch.Tensor, attn: torch.Tensor,
                        text_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The rest of the block from the self-attention output attn [B, S, H, D]: gated residual,
        cross-attention to the text, feed-forward; returns x [B, S, D]."""
        gate, c_shift, c_scale, c_gate = (self.scale_shift_table[:, None, 2:] + e[:, :, 2:]).unbind(2)
        x = run_gated_residual(x, self.attn1.out(attn), gate)

        h = self.norm2(x).to(x.dtype)
        q = self.attn2.norm_q(self.attn2.to_q(h)).unflatten(-1, (self.attn2.heads, -1))
        x = x + self.attn2.out(attention(q, *text_kv))

        h = run_layernorm_modulate(x, c_shift, c_scale, self.norm3.eps)
        return run_gated_residual(x, self.ffn(h), c_gate)


@dataclass
class TextContext:
    """A prompt, projected once and turned into every layer's cross-attention K/V (reused every step)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]


class CausalWanModel(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        self.patch_embedding = nn.Conv3d(
            cfg.in_channels + cfg.track_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        if any(cfg.abs_pos_grid):
            # zero at first: a model fine-tuned from weights without it starts out unchanged
            self.abs_pos = nn.Parameter(torch.zeros(1, cfg.dim, *cfg.abs_pos_grid))

    # ---- conditioning -------------------------------------------------------------------------
    def encode_text(self, text_emb: torch.Tensor) -> TextContext:
        """text_emb [B, L, text_dim] (umT5 output) -> per-layer cross-attention K/V.

        Embeddings shorter than the model's `text_len` are zero-padded to it, as Wan's own pipeline
        does (padding rows are attended, not masked: they shift the softmax, so a 5-token embedding
        gives exactly what the same embedding zero-padded to 512 gives). Longer ones raise ValueError."""
        p = self.patch_embedding.weight
        if text_emb.ndim != 3 or text_emb.shape[2] != self.config.text_dim:
            raise ValueError(f"text embeddings must be [B, L, {self.config.text_dim}]; got {tuple(text_emb.shape)}")
        n, want = text_emb.shape[1], self.config.text_len
        if n > want:
            raise ValueError(f"text embeddings of {n} tokens exceed the model's text_len {want}")
        if n < want:
            text_emb = F.pad(text_emb, (0, 0, 0, want - n))
        text = self.condition_embedder.text_embedder(text_emb.to(device=p.device, dtype=p.dtype))
        return TextContext(kv=[blk.attn2.text_kv(text) for blk in self.blocks])

    def grid(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        _, ph, pw = self.config.patch_size
        if latent_h % ph or latent_w % pw:
            raise ValueError(f"latent size {latent_h}x{latent_w} is not divisible by the patch {ph}x{pw}")
        return latent_h // ph, latent_w // pw

    # ---- shared trunk -------------------------------------------------------------------------
    def _run(
        self, x: torch.Tensor, t: torch.Tensor, text: TextContext | torch.Tensor, self_attention: SelfAttention,
        tracks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        if isinstance(text, torch.Tensor):
            text = self.encode_text(text)
        b, _, n_frames, lh, lw = x.shape
        if cfg.patch_size[0] != 1:
            raise NotImplementedError("temporal patching is not supported for causal streaming")
        if t.shape != (b, n_frames):
            raise ValueError(f"timesteps must be per frame, shape {(b, n_frames)}; got {tuple(t.shape)}")
        w = self.patch_embedding.weight
        x = x.to(w.dtype)
        if cfg.track_channels:
            if tracks is None:
                tracks = x.new_zeros(b, cfg.track_channels, n_frames, lh, lw)
            x = torch.cat([x, tracks.to(w.dtype)], dim=1)
        elif tracks is not None:
            raise ValueError("this model has no trajectory channels")
        gh, gw = self.grid(lh, lw)
        h = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()  # [B, F*gh*gw, dim]
        if any(cfg.abs_pos_grid):
            h = h + self.spatial_positions(gh, gw).repeat(1, n_frames, 1)

        temb, e = self.condition_embedder.time(t)
        for i, blk in enumerate(self.blocks):
            h = blk(h, e, text.kv[i], self_attention, i)

        shift, scale = (self.scale_shift_table[:, None] + temb[:, :, None]).unbind(2)  # [B, F, dim]
        out = self.proj_out(run_layernorm_modulate(h, shift, scale, self.norm_out.eps))  # [B, F*gh*gw, C*ph*pw]
        _, ph, pw = cfg.patch_size
        out = out.view(b, n_frames, gh, gw, ph, pw, cfg.out_channels)
        return out.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, cfg.out_channels, n_frames, gh * ph, gw * pw)

    def spatial_positions(self, gh: int, gw: int) -> torch.Tensor:
        """The absolute position embedding for a (gh, gw) token grid, [1, gh*gw, dim] in row-major
        token order; resized bilinearly from `abs_pos_grid` when the grid differs (another video size
        stretches the same layout over the frame)."""
        pos = self.abs_pos
        if tuple(pos.shape[2:]) != (gh, gw):
            pos = F.interpolate(pos.float(), size=(gh, gw), mode="bilinear", align_corners=False).to(pos.dtype)
        return pos.flatten(2).transpose(1, 2)

    def _rope(self, positions: torch.Tensor, gh: int, gw: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(positions, gh, gw, self.config.head_dim, self.config.rope_theta, device=device)

    # ---- full-sequence forwards ---------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, t: torch.Tensor, text: TextContext | torch.Tensor, *,
        chunk_frames: int | tuple[int, ...] | None = None, clean_x: torch.Tensor | None = None, clean_t: torch.Tensor | None = None,
        frame_offset: int = 0, tracks: torch.Tensor | None = None, clean_tracks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow prediction for a whole clip x [B, C, F, h, w] with per-frame timesteps t [B, F].

        chunk_frames=None: bidirectional (Wan). chunk_frames=k: block-causal over chunks of k frames;
        a sequence of block sizes (e.g. (1, 3, 3): an image start, then chunks of 3) gives uneven blocks.
        clean_x: teacher-forcing shape: the sequence is [clean | noisy]; clean chunk i sees clean
        chunks <= i, noisy chunk i sees clean chunks < i and itself. Returns the noisy half only.
        """
        b, _, n_frames, lh, lw = x.shape
        gh, gw = self.grid(lh, lw)
        tpf = gh * gw
        positions = torch.arange(n_frames, dtype=torch.float64) + frame_offset
        mask = None
        if clean_x is not None:
            if chunk_frames is None:
                raise ValueError("clean_x needs chunk_frames (teacher forcing is block-causal)")
            if clean_t is None:
                clean_t = torch.zeros_like(t)
            positions = torch.cat([positions, positions])
            chunk_of = block_index(n_frames, chunk_frames, x.device).repeat_interleave(tpf)
            c_row, c_col = chunk_of[:, None], chunk_of[None, :]
            top = torch.cat([c_col <= c_row, torch.zeros_like(c_row == c_col)], dim=1)  # clean rows
            bottom = torch.cat([c_col < c_row, c_col == c_row], dim=1)  # noisy rows
            mask = torch.cat([top, bottom], dim=0)
            if clean_tracks is not None or tracks is not None:
                if tracks is None or clean_tracks is None:
                    raise ValueError("pass tracks and clean_tracks together")
                tracks = torch.cat([clean_tracks, tracks], dim=2)
            x, t = torch.cat([clean_x, x], dim=2), torch.cat([clean_t, t], dim=1)
        elif chunk_frames is not None:
            chunk_of = block_index(n_frames, chunk_frames, x.device).repeat_interleave(tpf)
            mask = chunk_of[None, :] <= chunk_of[:, None]
        # the clip's rotation is known before the q/k norm: declared as qk_rope, it is fused into it
        out = self._run(x, t, text, ClipAttention(self._rope(positions, gh, gw, x.device), mask), tracks)
        return out[:, :, -n_frames:] if clean_x is not None else out

    # ---- streaming ----------------------------------------------------------------------------
    def forward_chunk(
        self, x: torch.Tensor, t: torch.Tensor, text: TextContext, view: SelfAttention,
        tracks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow prediction for one chunk; `view` (a cache view) answers self-attention: it applies
        the chunk's positions, supplies the cached history and, on a commit pass, stores K/V."""
        return self._run(x, t, text, view, tracks)


def block_index(n_frames: int, chunk_frames: int | tuple[int, ...] | list[int], device=None) -> torch.Tensor:
    """Block number of each frame [n_frames] (int64): frame // k for chunks of k frames, or the
    blocks listed (sizes must sum to n_frames). Raises ValueError otherwise."""
    if isinstance(chunk_frames, int):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames} must be >= 1")
        return torch.arange(n_frames, device=device) // chunk_frames
    sizes = [int(k) for k in chunk_frames]
    if sum(sizes) != n_frames or min(sizes, default=0) < 1:
        raise ValueError(f"chunk_frames blocks {sizes} must be >= 1 each and sum to the {n_frames} frames")
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


@dataclass
class ClipAttention:
    """Self-attention over a whole clip (bidirectional, or block-causal through `mask` [S, S]): q/k
    arrive rotated by the clip's RoPE, which the model fuses into their norm."""

    qk_rope: Rope
    mask: torch.Tensor | None = None

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, self.mask)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
