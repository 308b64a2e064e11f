"""`streamer train`: reproduce the shipped default model from a recipe file.

Two stages, both on clips the world generates on the fly (unlimited, seeded):
1. vae: the tiny autoencoder (models/tiny_vae.py), reconstruction loss with extra weight on the
   sprites, noise on the latents; then the latent mean/std are measured and stored in the model.
2. dit: the causal Wan DiT preset, flow matching with teacher forcing (Self-Forcing's
   [clean | noisy] block-causal shape, chunks of 3 latent frames), conditioned on the prompt
   (MiniLM token embeddings) and on MotionStream track channels (dropped per chunk with p=0.2).

Checkpoints (safetensors, small) and a plain-text log go to the output folder; `--ship` copies the
final weights into streamer/weights/, which is what `Pipeline.load()` uses when no checkpoint is given.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from streamer import checks
from streamer.models.tiny_vae import PRESETS as VAE_PRESETS
from streamer.models.tiny_vae import TinyVAE
from streamer.world.scenes import PRESETS as WORLD_PRESETS
from streamer.world.scenes import World

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
# the repository's recipe; an installed wheel carries the copy shipped beside the weights
DEFAULT_RECIPE = next((p for p in (Path(__file__).parent.parent.parent / "recipes" / "default.toml",
                                   WEIGHTS_DIR / "recipe.toml") if p.is_file()), WEIGHTS_DIR / "recipe.toml")


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no recipe at {path}")
    with open(path, "rb") as f:
        return tomllib.load(f)


class Log:
    """Appends one line per event to a text file (and the console when asked): small, greppable."""

    def __init__(self, path: Path, echo: bool = False):
        self.path, self.echo = path, echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.echo:
            tqdm.write(line)


def to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, base: float, warmup: int = 50, time_frac: float = 0.0) -> float:
    """Warmup then cosine decay to 0 at step `total`, or earlier when `time_frac` (the share of a
    wall-clock budget used, for recipes with `time_schedule = true`) runs ahead of the steps: a run
    capped by time still ends its schedule, whatever the machine's speed."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = max((step - warmup) / max(1, total - warmup), time_frac)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def time_fraction(r: dict, t0: float) -> float:
    """Share of the section's `max_minutes` used since t0, when it schedules by time (else 0)."""
    if not r.get("time_schedule") or not r.get("max_minutes"):
        return 0.0
    return (time.time() - t0) / 60 / r["max_minutes"]


# ---- stage 1: autoencoder ------------------------------------------------------------------------
def vae_batch(world: World, rng: np.random.Generator, batch: int, frames: int, crop: int):
    clips = [world.clip(int(rng.integers(1 << 30)), frames) for _ in range(batch)]
    h, w = clips[0].frames.shape[1:3]
    vids, bgs = [], []
    for c in clips:
        y, x = (int(rng.integers(0, (h - crop) // 8 + 1)) * 8, int(rng.integers(0, (w - crop) // 8 + 1)) * 8)
        vids.append(c.frames[:, y : y + crop, x : x + crop])
        bgs.append(np.broadcast_to(c.background[y : y + crop, x : x + crop], vids[-1].shape))
    return to_video(np.stack(vids)), to_video(np.stack(bgs))


def reconstruction_weight(video: torch.Tensor, bg: torch.Tensor, sprite_weight: float,
                          border_weight: float = 0.0, border: int = 8, halo_weight: float = 0.0,
                          halo: int = 3) -> torch.Tensor:
    """Per-pixel weight [B, 1, T, H, W] of the autoencoder's reconstruction loss for video and its
    background bg ([B, 3, T, H, W] in [-1, 1]): 1, plus sprite_weight where a sprite is drawn (a
    sprite is a few percent of the pixels, and its colour is what the eval finds), plus
    border_weight in the `border`-px band along the picture's edges. The band is where the
    convolutions' zero padding leaves the decoder least to go on: the v2-v8 autoencoder's round
    trip errs twice as much in its outer 3 px as inside (6.5 vs 3.7 levels of 255 on a held-out
    snow scene) and flickers there with the 4-frame latent period, which `streamer eval` scores as
    border change above interior change (its 8-px band, `evaluate.BORDER`).
    Plus halo_weight on the background pixels within `halo` px of a sprite (per frame): the v8
    decoder draws a red square on sand with an orange rim that the eval counts as an orange sprite,
    so the autoencoder alone keeps the two sprites of "a red square and an orange triangle on sand"
    apart in 3% of frames (docs/eval/identity_probe.py; a 45-min halo round did not lift it)."""
    sprite = ((video - bg).abs().amax(1, keepdim=True) > 0.08).float()
    weight = 1.0 + sprite_weight * sprite
    if halo_weight:
        b, _, t, h, w = sprite.shape
        near = F.max_pool2d(sprite.transpose(1, 2).reshape(b * t, 1, h, w), 2 * halo + 1, stride=1, padding=halo)
        ring = near.reshape(b, t, 1, h, w).transpose(1, 2) * (1.0 - sprite)
        weight = weight + halo_weight * ring
    if border_weight:
        band = torch.zeros(video.shape[-2:], dtype=video.dtype, device=video.device)
        band[:border], band[-border:], band[:, :border], band[:, -border:] = 1.0, 1.0, 1.0, 1.0
        weight = weight + border_weight * band
    return weight


def train_vae(recipe: dict, out: Path, log: Log, device: torch.device, resume: bool = False) -> TinyVAE:
    """Phases run in order, each with its own optimizer and cosine schedule; a phase's keys override
    the [vae] section (e.g. small crops first for speed, then whole frames with more sprite weight).
    [vae] init = <folder>: start from that folder's vae.safetensors instead of a fresh autoencoder,
    for decoder-only phases (`freeze_encoder`) on a shipped model: its latents, and so its DiT,
    stay valid. With `init`, anchor_weight = a > 0 trains the encoder too but adds a * the mean
    squared distance between the new and the init encoder's latents, both normalised by the init's
    latent statistics (the space its DiT was trained in): a sharper autoencoder whose latents stay
    near the ones the shipped DiT knows, so a short fine-tune re-fits it.
    steady_weight = s > 0 adds s * `group_flicker`: the decoder's frames of one latent frame drawn
    alike where the truth stands still; temporal_weight = m > 0 adds m * `temporal_difference_error`:
    the decoded change from frame to frame as the truth's, still or moving.
    Raises ValueError for a negative border_weight, halo_weight, anchor_weight, steady_weight or
    temporal_weight, or an
    anchor_weight without init."""
    base = {k: v for k, v in recipe["vae"].items() if k != "phases"}
    phases = recipe["vae"].get("phases") or [{}]
    world = World(world_config(recipe))
    torch.manual_seed(recipe.get("seed", 0))
    rng = np.random.default_rng([recipe.get("seed", 0), 100])
    if base.get("init"):
        vae = TinyVAE.from_file(resolve_path(base["init"]) / "vae.safetensors", device=device).train().requires_grad_(True)
        log(f"vae from {resolve_path(base['init'])}")
    else:
        vae = TinyVAE(VAE_PRESETS[base["preset"]]).to(device)
    ref_encoder = ref_std = None  # the init's frozen encoder and latent std [1, C, 1, 1, 1]
    if any(p.get("anchor_weight", base.get("anchor_weight", 0.0)) for p in phases):
        if not base.get("init"):
            raise ValueError("anchor_weight needs [vae] init: the autoencoder whose latents to stay near")
        ref = TinyVAE.from_file(resolve_path(base["init"]) / "vae.safetensors", device=device).eval().requires_grad_(False)
        ref_encoder, ref_std = ref.encoder, ref._view(ref.latent_std)  # the mean cancels in a difference
    first_phase = 0
    if resume and (out / "vae_phase.txt").is_file():
        first_phase = int((out / "vae_phase.txt").read_text()) + 1
        vae = TinyVAE.from_file(out / "vae.safetensors", device=device).train().requires_grad_(True)
        log(f"vae resumed after phase {first_phase - 1}")
    t0 = time.time()
    for pi, phase in enumerate(phases):
        if pi < first_phase:
            continue
        r = {**base, **phase}
        for key in ("border_weight", "halo_weight", "anchor_weight", "steady_weight", "temporal_weight"):
            if not isinstance(r.get(key, 0.0), (int, float)) or r.get(key, 0.0) < 0:
                raise ValueError(f"{key} must be a number >= 0, got {r[key]!r}")
        # freeze_encoder: decoder-only phases keep the latent space (and its statistics) fixed, so they
        # can run after, or beside, the DiT's training without invalidating it
        frozen = bool(r.get("freeze_encoder", False))
        vae.encoder.requires_grad_(not frozen)
        opt = torch.optim.Adam(vae.decoder.parameters() if frozen else vae.parameters(), lr=r["lr"])
        bar = tqdm(range(r["steps"]), desc=f"vae phase {pi}", mininterval=5, disable=not log.echo)
        t_phase = time.time()
        for step in bar:
            video, bg = vae_batch(world, rng, r["batch"], r["frames"], r["crop"])
            video, bg = video.to(device), bg.to(device)
            with torch.set_grad_enabled(not frozen):
                z = vae.encoder(video)
            rec = vae.decoder(z + r["latent_noise"] * torch.randn_like(z))[0]
            weight = reconstruction_weight(video, bg, r["sprite_weight"], r.get("border_weight", 0.0),
                                           halo_weight=r.get("halo_weight", 0.0))
            loss_rec = (weight * (rec - video) ** 2).mean() + 0.5 * (weight * (rec - video).abs()).mean()
            loss = loss_rec + r["latent_l2"] * z.pow(2).mean()
            if r.get("steady_weight", 0.0):
                loss_steady = group_flicker(rec, video, weight, vae.config.temporal)
                loss = loss + r["steady_weight"] * loss_steady
            if r.get("temporal_weight", 0.0):
                loss_temporal = temporal_difference_error(rec, video, weight)
                loss = loss + r["temporal_weight"] * loss_temporal
            if r.get("anchor_weight", 0.0):
                with torch.no_grad():
                    z_ref = ref_encoder(video)
                loss_anchor = ((z - z_ref) / ref_std).pow(2).mean()
                loss = loss + r["anchor_weight"] * loss_anchor
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, r["steps"], r["lr"], time_frac=time_fraction(r, t_phase))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r.get("max_minutes") and (time.time() - t_phase) / 60 > r["max_minutes"]:
                log(f"vae phase {pi} stopped at step {step} after {r['max_minutes']} min")
                break
            if step % 50 == 0 or step == r["steps"] - 1:
                psnr = -10 * math.log10(F.mse_loss(rec.clamp(-1, 1), video).item() / 4 + 1e-12)
                bar.set_postfix(loss=f"{loss_rec.item():.4f}", psnr=f"{psnr:.1f}")
                drift = f" anchor {loss_anchor.item():.4f}" if r.get("anchor_weight", 0.0) else ""
                drift += f" flicker {loss_steady.item():.5f}" if r.get("steady_weight", 0.0) else ""
                drift += f" temporal {loss_temporal.item():.5f}" if r.get("temporal_weight", 0.0) else ""
                log(f"vae phase {pi} step {step} loss {loss_rec.item():.5f} psnr {psnr:.2f} "
                    f"z_rms {z.pow(2).mean().sqrt().item():.3f}{drift} t {time.time() - t0:.0f}s")
        vae.eval()
        # latent statistics over whole full-size clips: the DiT trains on normalised latents
        if not frozen:
            with torch.no_grad():
                zs = [vae.encoder(to_video(world.clip(int(rng.integers(1 << 30)), base["frames"]).frames[None]).to(device))
                      for _ in range(base["stats_clips"])]
                zs = torch.cat([z.transpose(0, 1).flatten(1) for z in zs], 1)
                vae.latent_mean.copy_(zs.mean(1))
                vae.latent_std.copy_(zs.std(1).clamp_min(1e-3))
        vae.save(out / "vae.safetensors", half=False)
        (out / "vae_phase.txt").write_text(str(pi))
        log(f"vae phase {pi} done at {time.time() - t0:.0f}s; latent std {vae.latent_std.mean().item():.3f}")
        vae.train()
    vae.eval()
    return vae


def group_flicker(rec: torch.Tensor, video: torch.Tensor, weight: torch.Tensor, temporal: int = 4,
                  still: float = 0.02) -> torch.Tensor:
    """How much the decoder's frames of one latent frame differ where the truth stands still: the
    weighted mean, over pixels whose true value stays within `still` (in [-1, 1], 0.02 = 2.5 levels of
    255) across the group, of each frame's absolute difference from the group's mean frame.

    rec, video [B, 3, 1 + temporal * k, H, W] (the first frame is a latent frame's alone and is
    skipped), weight [B, 1, same T, H, W] (`reconstruction_weight`). Returns a scalar (0 with no still
    pixel). The decoder makes `temporal` video frames from each latent frame (TGrow); on v16's
    stream, whose edge latents the anchor holds as still as the interior's, those frames differ in the
    8-px border band twice as much as inside it (docs/model_history.md, "After v16"): a flicker the
    reconstruction loss alone leaves, since it asks each frame to be right, not the frames to agree."""
    k = (video.shape[2] - 1) // temporal
    if k == 0:
        return rec.new_zeros(())
    group = lambda x: x[:, :, 1:1 + temporal * k].unflatten(2, (k, temporal))  # noqa: E731  [B, C, k, t, H, W]
    r, v, w = group(rec), group(video), group(weight)
    static = ((v.amax(3, keepdim=True) - v.amin(3, keepdim=True)).amax(1, keepdim=True) < still).to(rec.dtype)
    dev = (r - r.mean(3, keepdim=True)).abs().mean(1, keepdim=True)  # [B, 1, k, t, H, W]
    mask = static.expand_as(dev) * w
    return (dev * mask).sum() / mask.sum().clamp_min(1.0)


def temporal_difference_error(rec: torch.Tensor, video: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """How far the decoded video's change from each frame to the next is from the truth's: the
    weighted mean over pixels and frame pairs of |(rec[t] - rec[t-1]) - (video[t] - video[t-1])|,
    channels averaged. rec, video [B, 3, T, H, W]; weight [B, 1, T, H, W] (`reconstruction_weight`,
    taken at the later frame). Returns a scalar (0 for T < 2). Where the truth stands still it asks
    for no flicker, as `group_flicker` does; where it moves, for the truth's motion frame by frame:
    `group_flicker` alone let a decoder draw a latent frame's four frames of a moving sprite alike,
    and the sprite then jumped at every fourth frame (docs/model_history.md, "After v16")."""
    if video.shape[2] < 2:
        return rec.new_zeros(())
    err = ((rec[:, :, 1:] - rec[:, :, :-1]) - (video[:, :, 1:] - video[:, :, :-1])).abs().mean(1, keepdim=True)
    w = weight[:, :, 1:]
    return (err * w).sum() / w.sum().clamp_min(1.0)


class WeightEMA:
    """An exponential moving average of a model's floating-point weights (fp32 shadow copies).

    After each optimizer step, `update()` moves every shadow w_ema <- decay * w_ema + (1 - decay) * w.
    The average, not the last step's weights, is what a run writes as dit.safetensors: it smooths
    the step-to-step swing of a small-batch fine-tune. Self-Forcing ships its generator's EMA the
    same way (`generator_ema`, decay 0.99). The shadow starts at the model's weights when made.
    """

    def __init__(self, model: torch.nn.Module, decay: float, state: dict | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.shadow = {k: (state[k] if state is not None else v).detach().float().clone() for k, v in live.items()}
        # state_dict() tensors share storage with the parameters, which the optimizer updates in place
        self._pairs = [(self.shadow[k], v) for k, v in live.items()]

    @torch.no_grad()
    def update(self) -> None:
        for w_ema, w in self._pairs:
            w_ema.lerp_(w.float(), 1.0 - self.decay)

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of the live ones."""
        return {k: self.shadow.get(k, v).to(v.dtype) for k, v in model.state_dict().items()}


# ---- stage 2: the DiT --------------------------------------------------------------------------
def train_dit(recipe: dict, vae: TinyVAE, out: Path, log: Log, device: torch.device,
              resume: bool = False, section: str = "dit", label: str | None = None) -> None:
    """`section` = "dit": teacher forcing from scratch. "finetune": the [finetune] keys override
    [dit]; the DiT starts from `init`'s dit.safetensors, and each step is one of: teacher forcing
    from frame 0 (chunks of 3), an image start (blocks [1, 3, 3, ...], the true first latent frame
    clean), or an image start whose context chunks are the model's own few-step rollout."""
    from streamer.models.sentence import load_text_encoder
    from streamer.models.trajectory_encoder import TrajectoryEncoder
    from streamer.models.wan import CausalWanModel, count_parameters, get_config

    label = label or section  # what the log calls the phases: "finetune phase 2", "refit phase 2"
    base = dict(recipe["dit"]) if section == "dit" else {**recipe["dit"], **recipe[section]}
    phases = base.pop("phases", None) or [{}]  # their values: check_phases, before any stage trains
    r = {**base, **phases[0]}
    world = World(world_config(recipe))
    seed = recipe.get("seed", 0)
    torch.manual_seed(seed)
    text_enc = load_text_encoder(r["text_encoder"])
    cfg = get_config(r["preset"])
    # one embedding per patch token of the world's frame, built when any phase asks for it or the
    # init has one (v8 on): the init's values (zero without one, so neutral), frozen in the phases
    # that do not set absolute_positions, so a recipe without the key keeps what its init learnt
    init_file = resolve_path(r["init"]) / "dit.safetensors" if r.get("init") else None
    if any({**base, **ph}.get("absolute_positions") for ph in phases) or _has_abs_pos(init_file):
        stride = cfg.vae_stride[1] * cfg.patch_size[1]
        cfg = replace(cfg, abs_pos_grid=(world.config.height // stride, world.config.width // stride))
    # out-of-view tracks get their own code (`track_outside`): a property of the model, like the
    # embedding, so it holds from the first phase that asks for it, or from an init that has it
    if any({**base, **ph}.get("track_outside") for ph in phases) or _init_config(init_file).get("track_outside"):
        cfg = replace(cfg, track_outside=True)
    model = CausalWanModel(cfg).to(device)
    if cfg.text_dim != text_enc.dim or cfg.text_len != text_enc.text_len or cfg.track_channels != r["track_dim"]:
        raise ValueError("recipe: the DiT preset's text_dim/text_len/track_channels do not match the encoders")
    tracks_enc = TrajectoryEncoder(dim=r["track_dim"], outside=cfg.track_outside)
    ckpt = out / "dit_last.pt"
    state = torch.load(ckpt, weights_only=True) if resume and ckpt.is_file() else None
    if r.get("init") and state is None:
        from safetensors.torch import load_file

        weights = {k: v.float() for k, v in load_file(str(init_file)).items()}
        if "abs_pos" in weights and weights["abs_pos"].shape != model.abs_pos.shape:
            raise ValueError(f"{init_file}: its position embedding is for a {tuple(weights['abs_pos'].shape[2:])} "
                             f"token grid, this world's is {cfg.abs_pos_grid}")
        got = model.load_state_dict(weights, strict=False)
        # only a new absolute position embedding may be missing (it starts at zero: the init's behaviour)
        if got.unexpected_keys or set(got.missing_keys) - {"abs_pos"}:
            raise ValueError(f"{init_file}: not this DiT's weights (missing {got.missing_keys[:3]}, "
                             f"unexpected {got.unexpected_keys[:3]})")
        log(f"dit initialised from {init_file}")
    if state is not None:
        model.load_state_dict(state["model"])
    log(f"dit {r['preset']}: {count_parameters(model) / 1e6:.2f}M parameters")
    vae = vae.to(device).eval()
    # phases (fine-tune only): each overrides the section's keys and runs its own optimizer and
    # schedule on the previous phase's weights, in the same folder
    first_phase = int(state.get("phase", 0)) if state is not None else 0
    if state is not None and state.get("done"):  # that phase ended: the next one starts afresh
        first_phase, state = first_phase + 1, None
    for pi in range(first_phase, len(phases)):
        if pi > 0 and not (state is not None and pi == first_phase) and {**base, **phases[pi - 1]}.get("ema_decay"):
            # a phase that averaged its weights hands the next one its average (dit.safetensors), as
            # a separate run started from its folder would (the souped phases already hold theirs)
            from safetensors.torch import load_file

            model.load_state_dict({k: v.float() for k, v in load_file(str(out / "dit.safetensors")).items()})
            log(f"{label} phase {pi} starts from phase {pi - 1}'s weight average")
        r = {**base, **phases[pi]}
        # the absolute position embedding learns at abs_pos_lr_scale (10) x the lr: it starts from zero
        # inside a fine-tune of a few hundred steps, where Adam moves a weight by about lr per step
        if getattr(model, "abs_pos", None) is not None:  # frozen: no gradient, so no share of the clipped norm
            model.abs_pos.requires_grad_(bool(r.get("absolute_positions")))
        new = [p for n, p in model.named_parameters() if n == "abs_pos" and r.get("absolute_positions")]
        groups = [{"params": [p for n, p in model.named_parameters() if n != "abs_pos"], "lr_scale": 1.0}]
        groups += [{"params": new, "lr_scale": float(r.get("abs_pos_lr_scale", 10.0))}] if new else []
        opt = torch.optim.AdamW(groups, lr=r["lr"], weight_decay=r["weight_decay"], betas=(0.9, 0.99))
        start, ema_state = 0, None
        if state is not None and pi == first_phase:
            opt.load_state_dict(state["opt"])
            ema_state = state.get("ema")
            start = int(state["step"]) + 1
            log(f"dit resumed at step {start}" + (f" of phase {pi}" if len(phases) > 1 else ""))
        if len(phases) > 1:
            log(f"{label} phase {pi}: " + ", ".join(f"{k} = {v}" for k, v in phases[pi].items()))
        _train_dit_phase(recipe, r, model, opt, vae, world, text_enc, tracks_enc, out, log, device, seed,
                         start, pi if len(phases) > 1 else None, ema_state, label)


def check_phase(r: dict) -> None:
    """Raise ValueError (one line, naming the key) for a value a DiT phase cannot train with; run for
    every phase before the first one trains, so a bad last phase costs no hours of the ones before."""
    soup = float(r.get("soup_with_start", 0.0))
    if not 0.0 <= soup < 1.0:
        raise ValueError(f"soup_with_start must be in [0, 1), got {soup}")
    offset = r.get("text_only_offset", 0)
    if not isinstance(offset, int) or offset < 0 or (offset and not (r.get("spawn_text") and r.get("video_start"))):
        raise ValueError(f"text_only_offset must be a whole number of video frames >= 0, used with "
                         f"spawn_text = true and video_start > 0; got {offset!r}")
    if not 0.0 <= r.get("video_start", 0.0) <= 1.0 or (r.get("video_start") and int(r.get("image_chunks", 3)) < 2):
        raise ValueError(f"video_start must be a share in [0, 1], with image_chunks >= 2; got {r.get('video_start')!r}")
    if not isinstance(r.get("track_offset", 0), int) or r.get("track_offset", 0) < 0:
        raise ValueError(f"track_offset must be a whole number of video frames >= 0, got {r['track_offset']!r}")
    if r.get("exit_start") and not (0.0 < r["exit_start"] <= 1.0 and r.get("track_offset", 0) > 16):
        raise ValueError(f"exit_start must be a share in (0, 1] with track_offset > 16, got {r['exit_start']!r}")
    if r.get("cross_share") is not None and not 0.0 <= r["cross_share"] <= 1.0:
        raise ValueError(f"cross_share must be a share in [0, 1], got {r['cross_share']!r}")
    own_bg = r.get("own_background", 0.0)
    if isinstance(own_bg, bool) or not isinstance(own_bg, (int, float)) or not 0.0 <= own_bg < float("inf"):
        raise ValueError(f"own_background must be a finite loss weight >= 0 (0: off), got {own_bg!r}")
    if own_bg and not r.get("noise_rollout"):
        raise ValueError("own_background acts on rollouts from noise only: set noise_rollout > 0 with it")
    bg_mean = r.get("background_mean", 0.0)
    if isinstance(bg_mean, bool) or not isinstance(bg_mean, (int, float)) or not math.isfinite(bg_mean) or bg_mean < 0:
        raise ValueError(f"background_mean must be a finite loss weight >= 0 (0: off), got {bg_mean!r}")
    if bg_mean and not own_bg:
        raise ValueError("background_mean acts on the cells own_background replaces: set own_background > 0 with it")
    if not isinstance(r.get("own_background_text", False), bool):
        raise ValueError(f"own_background_text must be true or false, got {r['own_background_text']!r}")
    layout = r.get("sink_layout", 0.0)
    if isinstance(layout, bool) or not isinstance(layout, (int, float)) or not 0.0 <= layout <= 1.0:
        raise ValueError(f"sink_layout must be a share in [0, 1], got {layout!r}")
    if layout and (r.get("rerender") or r.get("latent_frames", 0) < 3 * r.get("chunk_frames", 1)):
        raise ValueError("sink_layout needs latent_frames >= 3 x chunk_frames (a sink, a block without loss, "
                         "a block with it) and no rerender")
    layout_image = r.get("sink_layout_image", 0.0)
    if isinstance(layout_image, bool) or not isinstance(layout_image, (int, float)) or not 0.0 <= layout_image <= 1.0:
        raise ValueError(f"sink_layout_image must be a share in [0, 1], got {layout_image!r}")
    if layout_image and not (r.get("image_start") and int(r.get("image_chunks", 3)) >= 2):
        raise ValueError("sink_layout_image acts on image starts: set image_start > 0 and image_chunks >= 2 with it")
    gap = r.get("sink_gap", 480)
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 1:
        raise ValueError(f"sink_gap must be a whole number of video frames >= 1, got {gap!r}")
    ghost = r.get("ghost", 0.0)
    if isinstance(ghost, bool) or not isinstance(ghost, (int, float)) or not 0.0 <= ghost <= 1.0:
        raise ValueError(f"ghost must be a share in [0, 1], got {ghost!r}")
    alpha = r.get("ghost_alpha")
    if alpha is not None and not (isinstance(alpha, list) and len(alpha) == 2
                                  and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alpha)
                                  and 0.0 < alpha[0] <= alpha[1] <= 1.0):
        raise ValueError(f"ghost_alpha must be [lo, hi] with 0 < lo <= hi <= 1 (the copy's opacity), got {alpha!r}")
    if ghost and r.get("latent_frames", 0) < 3 * r.get("chunk_frames", 1):
        raise ValueError("ghost needs latent_frames >= 3 x chunk_frames (a block, the block with the copy, "
                         "the block without it)")
    fade = r.get("fade", 0.0)
    if isinstance(fade, bool) or not isinstance(fade, (int, float)) or not 0.0 <= fade <= 1.0:
        raise ValueError(f"fade must be a share in [0, 1], got {fade!r}")
    fade_alpha = r.get("fade_alpha")
    if fade_alpha is not None and not (isinstance(fade_alpha, list) and len(fade_alpha) == 2
                                       and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in fade_alpha)
                                       and 0.0 < fade_alpha[0] <= fade_alpha[1] < 1.0):
        # above 0: a sprite faded out altogether no longer shows where it is (`fade_batch`)
        raise ValueError(f"fade_alpha must be [lo, hi] with 0 < lo <= hi < 1 (the opacity a fading sprite is left "
                         f"with), got {fade_alpha!r}")
    if fade and r.get("latent_frames", 0) < 3 * r.get("chunk_frames", 1):
        raise ValueError("fade needs latent_frames >= 3 x chunk_frames (a block, the block where the sprites fade, "
                         "the block with them whole)")
    if not isinstance(r.get("own_background_sprites", False), bool) or (r.get("own_background_sprites") and not own_bg):
        raise ValueError(f"own_background_sprites must be true or false, and true only with own_background > 0; "
                         f"got {r.get('own_background_sprites')!r}")
    if r.get("own_background_from", "previous") not in ("previous", "sink") or (
            r.get("own_background_from") == "sink" and not own_bg):
        raise ValueError(f"own_background_from must be \"previous\" or \"sink\" (\"sink\" with own_background > 0); "
                         f"got {r.get('own_background_from')!r}")
    hb = r.get("history_bias", 0.0)
    if isinstance(hb, bool) or not isinstance(hb, (int, float)) or not math.isfinite(hb) or hb < 0 or (
            hb and r.get("own_background_from") != "sink"):
        raise ValueError(f"history_bias must be a finite offset scale >= 0 (0: off), with own_background_from = "
                         f"\"sink\"; got {hb!r}")
    if r.get("own_background_text") and not own_bg:
        raise ValueError("own_background_text widens own_background: set own_background > 0 with it")


def _train_dit_phase(recipe, r, model, opt, vae, world, text_enc, tracks_enc, out, log, device, seed,
                     start: int, phase: int | None, ema_state: dict | None = None, label: str = "dit") -> None:
    """One schedule of train_dit (a stage, or one phase of the fine-tune) from step `start`."""
    ckpt = out / "dit_last.pt"
    # keyed by the first step (and phase), so a resumed run draws fresh clips instead of replaying the first ones
    key = [seed, 200] + ([phase] if phase else []) + ([start] if start else [])
    rng = np.random.default_rng(key)
    tag = f"p{phase}_" if phase is not None else ""  # file names: p0_start.safetensors, p0_step100/
    who = f"{label} phase {phase}:" if phase is not None else label  # log lines: "finetune phase 0: step 20 ..."
    n_lat, chunk = r["latent_frames"], r["chunk_frames"]
    n_video = 1 + 4 * (n_lat - 1)
    t0 = time.time()
    loss_avg = None
    # the weights' moving average (ema_decay, per phase): what dit.safetensors holds; the raw weights
    # stay in dit_last.pt (with the average) so a resumed run and the next phase continue them
    weight_ema = None
    if r.get("ema_decay"):
        weight_ema = WeightEMA(model, float(r["ema_decay"]), ema_state)
        log(f"{who} weights averaged with decay {weight_ema.decay}: dit.safetensors holds the average")
    desc = f"{label} phase {phase}" if phase is not None else label
    bar = tqdm(range(start, r["steps"]), desc=desc, mininterval=5, initial=start, total=r["steps"],
               disable=not log.echo)  # --quiet: train.log only
    counts = {"tf": 0, "noise rollout": 0, "image": 0, "rollout": 0, "guided": 0,
              **({"ghost": 0} if r.get("ghost") else {}),
              **({"fade": 0} if r.get("fade") else {}),
              **({"video": 0} if r.get("video_start") else {}),
              **({"sink": 0} if r.get("sink_layout") or r.get("sink_layout_image") else {})}
    teacher = load_teacher(r, model, device, out / f"{tag}teacher.safetensors", fresh=start == 0)
    # soup_with_start = a: the phase ends on (1 - a) * its weights + a * its start weights (a uniform
    # model soup of a fine-tune and its start, Wortsman et al. 2022); the start is kept in the folder
    soup = float(r.get("soup_with_start", 0.0))  # check_phase has checked every value
    soup_start = out / f"{tag}start.safetensors"
    if soup and (start == 0 or not soup_start.is_file()):
        save_dit(model, soup_start)
    null_text = text_enc.encode([" "]).to(device).clone() if teacher is not None else None
    for step in bar:
        # the step's layout: teacher forcing from frame 0, or an image start (blocks [1, chunk, ...]),
        # or a prompt alone's own first-chunk sample (p = sample_loss, `sample_loss`)
        # (no draws when off: the teacher-forcing stage keeps the clip stream it was trained on)
        own = r.get("sample_loss", 0.0) > 0 and rng.random() < r["sample_loss"]
        image = not own and r.get("image_start", 0.0) > 0 and rng.random() < r["image_start"]
        roll = image and r.get("rollout", 0.0) > 0 and rng.random() < r["rollout"]
        # a prompt alone whose history shows its sprite twice, the copy gone in the truth (p = ghost;
        # `ghost_batch`); drawn only when asked, so the recipes before it draw the steps they drew
        ghost = not own and not image and r.get("ghost", 0.0) > 0 and rng.random() < r["ghost"]
        # a prompt alone whose sprites fade in the history, whole again in the truth (p = fade;
        # `fade_batch`); likewise drawn only when asked
        fade = not own and not image and not ghost and r.get("fade", 0.0) > 0 and rng.random() < r["fade"]
        edited = ghost or fade  # the same layout: a block, the edited block (no loss), the block with the loss
        # a stream without a start image: its first chunk too is the model's own (p = noise_rollout)
        noise_roll = (not own and not image and not edited and r.get("noise_rollout", 0.0) > 0
                      and rng.random() < r["noise_rollout"])
        # an image start whose first block is a whole clean chunk more (p = video_start): a video's
        # last frames, like the tail `generate --continue` starts from, which show the sprites' motion
        video = image and r.get("video_start", 0.0) > 0 and rng.random() < r["video_start"]
        # Deep Sink's layout (p = sink_layout of the steps without an image start): the blocks after
        # the first come from later in the clip, as the cache of a stream's 4th chunk on holds them
        # (drawn only when asked, so the recipes before it draw the clips they drew)
        sink = not own and not image and not edited and r.get("sink_layout", 0.0) > 0 and rng.random() < r["sink_layout"]
        gap = chunk * int(rng.integers(1, sink_gap_chunks(r) + 1)) if sink else 0
        # the same for a share of the image starts (p = sink_layout_image): their sinks are the start
        # frame and the next two latent frames (of a video start, its first three), and their chunks
        # start one latent frame after a chunk boundary, so the first gap is the one latent frame
        # evicted before the sinks (latent frame 3), then one more chunk at a time
        if image and r.get("sink_layout_image", 0.0) > 0 and rng.random() < r["sink_layout_image"]:
            sink, gap = True, 1 + chunk * int(rng.integers(0, sink_gap_chunks(r)))
        mode = ("sample" if own else "rollout" if roll else "image" if image else "fade" if fade else "ghost" if ghost
                else "noise rollout" if noise_roll else "tf")
        counts[mode] = counts.get(mode, 0) + 1
        if video:
            counts["video"] += 1
        if sink:
            counts["sink"] += 1
        if own:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.get("bf16", True)):
                loss = sample_loss(model, vae, world, rng, r, text_enc, chunk, device)
        elif edited:
            batch = fade_batch if fade else ghost_batch
            x0, text, tracks, weight, cells = batch(world, rng, r, vae, text_enc, n_lat, chunk, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.get("bf16", True)):
                loss = flow_loss(model, x0, text, tracks, rng, r, chunk, sprites=weight, cell_weight=cells)
        else:
            k = int(r.get("image_chunks", 3))
            if image and gap:  # Deep Sink's layout: the sink block (given, no loss), then k chunks
                blocks, nl = (chunk,) * (1 + k), chunk * (1 + k)
            elif image:  # the start frame (and, from a video, a clean chunk more), then the chunks
                blocks, nl = (1 + chunk * video,) + (chunk,) * (k - video), 1 + chunk * k
            else:
                blocks, nl = chunk, n_lat
            loss = _flow_step(model, vae, world, rng, r, text_enc, tracks_enc, teacher, null_text, device, chunk,
                              blocks, nl, mode, counts, gap=gap, video=video)
        for g in opt.param_groups:
            g["lr"] = g.get("lr_scale", 1.0) * cosine_lr(step, r["steps"], r["lr"], r["warmup"],
                                                         time_frac=time_fraction(r, t0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if weight_ema is not None:
            weight_ema.update()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        minutes = (time.time() - t0) / 60
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_avg:.4f}")
            log(f"{who} step {step} loss {loss.item():.4f} avg {loss_avg:.4f} mode {mode} t {minutes * 60:.0f}s "
                f"(steps {', '.join(f'{k} {v}' for k, v in counts.items())})")
        # stop_step: end before the schedule does (the shipped fine-tune is step 410 of a 750-step cosine)
        done = step == min(r["steps"] - 1, r.get("stop_step", r["steps"])) or minutes > r["max_minutes"]
        if done and soup:
            soup_into(model, soup_start, soup, weight_ema)
            weight_ema = None  # the soup holds the average: the checkpoint and dit.safetensors keep it
            log(f"{who} weights souped with the phase start: {1 - soup:g} x end + {soup:g} x start")
        if step % r["checkpoint_every"] == 0 or done:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "phase": phase or 0, "done": done,
                        **({"ema": weight_ema.shadow} if weight_ema is not None else {})}, ckpt)
            shipped = weight_ema.state_dict(model) if weight_ema is not None else None
            stream = stream_metadata(recipe)
            extra = {"step": str(step) if phase is None else f"{step} (phase {phase})",
                     "track_dim": str(r["track_dim"]), "text_encoder": r["text_encoder"], "stream": json.dumps(stream)}
            save_dit(model, out / "dit.safetensors", extra=extra, state=shipped)
            if r.get("keep_every") and step % r["keep_every"] == 0:  # earlier checkpoints, to pick by eval
                keep = out / f"{tag}step{step}"
                keep.mkdir(exist_ok=True)
                save_dit(model, keep / "dit.safetensors", extra=extra, state=shipped)
                shutil.copy(out / "vae.safetensors", keep / "vae.safetensors")
        if done:
            bar.update(1)  # the loop's own count would come after this step; the bar ends full
            log(f"{who} stopped at step {step} after {minutes:.1f} min "
                f"(steps {', '.join(f'{k} {v}' for k, v in counts.items())})")
            break


def _flow_step(model, vae, world, rng, r, text_enc, tracks_enc, teacher, null_text, device, chunk, blocks, nl: int,
               mode: str, counts: dict, gap: int = 0, video: bool = False) -> torch.Tensor:
    """The loss of one flow-matching step of _train_dit_phase: teacher forcing, an image start, or a
    rollout (from the true first frame, or from noise) whose context is the model's own samples.
    gap > 0 (latent frames): Deep Sink's layout (`dit_batch`); the block right after the sink, whose
    only history is the sink across the gap (a layout no stream shows), has no loss. For an image
    start (`sink_layout_image`) the sink block is the given one (no loss either). video: the image
    start is a video start (its first block, or sink, a whole clean chunk more)."""
    image, noise_roll = mode in ("image", "rollout"), mode == "noise rollout"
    # a later stretch of a prompt alone's stream, after bounces: only where its start shows the
    # motion (a video start), since one frame cannot tell which way a bounced sprite is heading
    offset = int(r.get("text_only_offset", 0)) if image and video else 0
    x0, text, tracks, sprites, clips, text_only = dit_batch(world, rng, r, vae, text_enc, tracks_enc, 1 + 4 * (nl - 1),
                                                             nl, chunk, device, blocks=blocks, with_clips=True,
                                                             text_offset=offset, gap=gap)
    # bf16 autocast: ~4x the fp32 matmul throughput on a recent CPU (and the usual choice on GPU)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.get("bf16", True)):
        ctx = None
        # Self-Forcing's exposure-bias cure, against the truth: the history is the model's own
        if mode in ("rollout", "noise rollout"):
            ctx = rollout_context(model, x0, text, tracks, blocks, int(r.get("rollout_chunks", 2)), r,
                                  from_noise=noise_roll)
            if noise_roll and r.get("rerender") and text_only.any():
                # a prompt alone's truth goes on from where the model's own first chunk put its sprites
                idx = np.nonzero(text_only)[0]
                new_x0, new_sprites, _ = rerender(world, vae, [clips[i] for i in idx], ctx[idx, :, :1],
                                                  1 + 4 * (nl - 1), r)
                x0, sprites = x0.clone(), sprites.clone()
                x0[idx], sprites[idx] = new_x0.to(x0.dtype), new_sprites
        cell_weight = own_bg = None
        if noise_roll and r.get("own_background", 0.0) > 0:
            # the background continues the model's own history, not the true clip's (a fresh draw)
            n_own = int(r.get("rollout_chunks", 2))
            # own_background reads the last latent frame of each own block only: decode just those
            mine = (own_sprite_cells(vae, ctx, clips, frames=[k * blocks - 1 for k in range(1, n_own + 1)])
                    if r.get("own_background_sprites") else None)
            # own_bg: the replaced cells, the background that continues the model's own history
            x0, cell_weight, own_bg = own_background(x0, ctx, sprites, blocks, n_own, text_only, r, own_sprites=mine)
        if noise_roll and r.get("history_bias", 0.0) > 0:
            ctx = history_bias(ctx, blocks, float(r["history_bias"]), rng)
        if gap:
            cell_weight = torch.ones_like(sprites) if cell_weight is None else cell_weight.clone()
            cell_weight[:, :, chunk : 2 * chunk] = 0.0
        # guided teacher targets on teacher-forced and image-start steps (p = guidance_p); a rollout
        # keeps the truth as its target: the point of it is to steer own history back to the truth
        guided = teacher is not None and mode in ("tf", "image") and rng.random() < r.get("guidance_p", 1.0)
        loss = flow_loss(model, x0, text, tracks, rng, r, blocks, context=ctx, skip_first=image, sprites=sprites,
                         teacher=teacher if guided else None, null_text=null_text,
                         history_background=r.get("noise_rollout_background", 1.0) if noise_roll else 1.0,
                         cell_weight=cell_weight, background_cells=own_bg)
    counts["guided"] += guided
    return loss


def sink_gap_chunks(r: dict) -> int:
    """The most chunks a `sink_layout` step skips between its sink and its next block:
    r["sink_gap"] video frames (default 480, 30 s of the world's 16 fps) in whole chunks, at least 1."""
    return max(1, int(r.get("sink_gap", 480)) // (4 * int(r["chunk_frames"])))


@torch.no_grad()
def own_background(x0: torch.Tensor, ctx: torch.Tensor, sprites: torch.Tensor, chunk: int, n_own: int,
                   text_only: np.ndarray, r: dict, own_sprites: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clean clip a rollout from noise is trained toward, with its background continuing the
    model's own history (`own_background`, tried after v9). x0 [B, C, F, h, w] is the true clip,
    ctx (same shape) the rollout (`rollout_context(from_noise=True)`: blocks 0..n_own-1 the model's
    own, of `chunk` latent frames each), sprites [B, 1, F, h, w] the true sprite cells.

    From noise the history's background is the model's own draw, and the true clip's is another
    texture: regressed on it, each chunk learns to redraw the background from the prompt instead of
    copying it, and a ten-minute stream's background jitters chunk to chunk (docs/model_history.md, "v9"). Here,
    in every block whose previous block is the model's own, the background cells (farther than
    one cell from a sprite cell of the block or of that previous block's last frame) take that last
    own latent frame instead, in the noisy input and in the target alike (the world's backgrounds
    are static, so their later latent frames match to ~7% of the latents' spread); the ring of
    cells within one cell of a sprite is left out of the loss (its truth lies on the other
    texture). Clips with tracks only, unless `own_background_text`: a prompt alone's own sprite
    need not be where the true one is.

    r["own_background_from"] = "sink" (default "previous"): every such block continues the first
    block's last latent frame instead of its previous block's, the sprite ring taken around that
    frame's sprites. Deep Sink keeps the first chunk in the cache for the whole stream, and a static
    background copied from the block before picks up each chunk's small bias in turn: v13's latents
    drift by 0.02-0.09 over a stream's first five chunks (docs/model_history.md, "After v13, part 3").
    Copied from the sink, a block's error is its own, not the sum of the chunks before it.

    own_sprites (bool [B, 1, F, h, w], `own_sprite_cells`; with `own_background_sprites`): the cells
    where the model's own history shows a named sprite's colour. Within one cell of them the block
    keeps the truth: otherwise a sprite the model drew away from the true one is copied into the
    target as background and stays, a second sprite beside the true one (with v11's recipe in 9.4%
    of a prompt alone's loss-block frames against 0.3% in the truth; docs/model_history.md,
    "After v11, part 3").

    Returns (x0 with those cells replaced, loss weights [B, 1, F, h, w]: `own_background` on the
    replaced cells, 0 on the ring, 1 elsewhere, the replaced cells: bool [B, 1, F, h, w])."""
    import torch.nn.functional as F

    b, _, n, _, _ = x0.shape
    out, weight = x0.clone(), torch.ones_like(sprites)
    replaced = torch.zeros_like(sprites, dtype=torch.bool)
    use = torch.ones(b, dtype=torch.bool) if r.get("own_background_text") else torch.from_numpy(~np.asarray(text_only, bool))
    use = use.to(x0.device)[:, None, None, None]
    near = F.max_pool3d(sprites, (1, 3, 3), stride=1, padding=(0, 1, 1)) > 0  # sprite cells + one cell
    own_near = (F.max_pool3d(own_sprites.float(), (1, 3, 3), stride=1, padding=(0, 1, 1)) > 0
                if own_sprites is not None else None)
    from_sink = r.get("own_background_from", "previous") == "sink"
    for k in range(1, min(n_own, n // chunk - 1) + 1):
        s, e = k * chunk, min((k + 1) * chunk, n)
        f = chunk - 1 if from_sink else s - 1  # the own latent frame the background continues
        ring = (near[:, :, s:e] | near[:, :, f : f + 1]) & use[:, :, None]
        bg = ~ring & use[:, :, None]
        if own_near is not None:  # the model's own sprites are no background to continue
            bg = bg & ~own_near[:, :, f : f + 1]
        out[:, :, s:e] = torch.where(bg, ctx[:, :, f : f + 1].to(out.dtype), out[:, :, s:e])
        replaced[:, :, s:e] = bg
        weight[:, :, s:e] = torch.where(bg, torch.full_like(weight[:, :, s:e], float(r["own_background"])),
                                        torch.where(ring & (sprites[:, :, s:e] == 0), 0.0, weight[:, :, s:e]))
    return out, weight, replaced


def history_bias(ctx: torch.Tensor, first: int, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """The rollout ctx [B, C, F, h, w] with one offset per clip and channel, drawn N(0, scale^2),
    added to every latent frame from `first` on (the history after the sink block); the sink keeps
    its own latents. A copy; rng draws the offsets (B x C normal draws).

    With `own_background_from = "sink"` the block trained on this history is told to continue the
    sink's background whatever brightness the recent chunks have drifted to: error injection into
    the context (as "Stable Video Infinity"'s error recycling, Li et al. 2025, or diffusion forcing's
    context noise), aimed at the one error a stream's background accumulates, a bias shared by all
    its cells (v13's latents: 0.02-0.09 per channel over the first chunks; docs/model_history.md,
    "After v13, part 3"). Per-cell context noise (`context_noise`) averages out over the frame and
    does not show the model such a bias."""
    b, c = ctx.shape[:2]
    offset = torch.from_numpy(rng.standard_normal((b, c)).astype(np.float32)) * scale
    out = ctx.clone()
    out[:, :, first:] += offset.to(out.device, out.dtype)[:, :, None, None, None]
    return out


@torch.no_grad()
def own_sprite_cells(vae, ctx: torch.Tensor, clips, tol: float | None = None,
                     frames: list[int] | None = None) -> torch.Tensor:
    """bool [B, 1, F, h, w]: the latent cells of a rollout ctx ([B, C, F, h, w]) where its decoded
    frame shows a colour its clip's prompt names (RGB distance < tol, default the eval's COLOUR_TOL,
    in any pixel of the cell). Each latent frame is decoded on its own, as one video frame: what the
    cell looks like, not a stream's motion. clips: the batch's world clips (their sprites' colours).
    frames: the latent frames to look at (default all); the others are all False."""
    from streamer.models.frames import video_to_uint8
    from streamer.world.evaluate import COLOUR_TOL, has_colour

    b, _, n, h, w = ctx.shape
    tol = COLOUR_TOL if tol is None else tol
    idx = list(range(n)) if frames is None else list(frames)
    m = len(idx)
    picked = ctx[:, :, idx].float().permute(0, 2, 1, 3, 4).reshape(b * m, -1, 1, h, w)
    decoded = video_to_uint8(vae.decode(picked))[:, 0]  # [B * m, H, W, 3]
    out = torch.zeros(b, 1, n, h, w, dtype=torch.bool)
    for i, frame in enumerate(decoded):
        hit = np.zeros(frame.shape[:2], bool)
        for rgb in {sp.rgb for sp in clips[i // m].scene.sprites}:
            hit |= has_colour(frame, rgb, tol)
        sy, sx = frame.shape[0] // h, frame.shape[1] // w
        out[i // m, 0, idx[i % m]] = torch.from_numpy(hit.reshape(h, sy, w, sx).any(axis=(1, 3)))
    return out.to(ctx.device)


@torch.no_grad()
def soup_into(model, start: Path, a: float, weight_ema: WeightEMA | None = None) -> None:
    """Set `model`'s floating-point weights to (1 - a) * end + a * start, where end is the model
    (or its weight average, when given) and start the dit.safetensors at `start`."""
    from safetensors.torch import load_file

    begin = load_file(str(start))
    end = weight_ema.state_dict(model) if weight_ema is not None else model.state_dict()
    souped = {k: torch.lerp(v.float(), begin[k].float(), a).to(v.dtype) if v.is_floating_point() else v
              for k, v in end.items()}
    model.load_state_dict(souped)


def world_config(recipe: dict):
    """The recipe's [world]: its `preset` (scenes.PRESETS) with any other key replacing that field of
    `WorldConfig` (e.g. `near_colours = 0.5`). Raises ValueError naming an unknown key or a bad value."""
    import dataclasses

    from streamer.world.scenes import WorldConfig

    section = dict(recipe.get("world", {}))
    preset = section.pop("preset", "world-128")
    if preset not in WORLD_PRESETS:
        raise ValueError(f"[world] preset {preset!r} is unknown; known: {', '.join(WORLD_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    if unknown := sorted(set(section) - fields):
        raise ValueError(f"[world] {', '.join(unknown)}: not a world setting; known: preset, {', '.join(sorted(fields))}")
    section = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    try:
        return dataclasses.replace(WORLD_PRESETS[preset], **section)
    except TypeError:  # a value of the wrong kind, e.g. near_colours = "half"
        raise ValueError(f"[world] {', '.join(f'{k} = {v!r}' for k, v in section.items())}: a value of the wrong "
                         "kind") from None


def stream_metadata(recipe: dict) -> dict:
    """The recipe's [stream] as the weights' "stream" metadata (`Pipeline.stream_defaults`): the
    cache policy, its knobs, and when given the text guidance (with its timestep interval) and the
    denoising steps (a count or the timesteps: `sampler.own_sampler`, whose ValueError it raises),
    the hidden chunks (`StreamConfig.hidden_chunks`; `checks.hidden_chunks`'s ValueError) and the
    drift anchor (`StreamConfig.drift_anchor`; `checks.drift_anchor`'s ValueError)."""
    from streamer.checks import drift_anchor, hidden_chunks
    from streamer.sampler import own_sampler

    stream = dict(recipe.get("stream", {}))
    out = {"policy": stream.pop("policy", "window")}
    for key in ("guidance", "guidance_interval", "steps", "hidden_chunks", "drift_anchor"):
        if key in stream:
            out[key] = stream.pop(key)
    if "steps" in out:
        own_sampler(out["steps"])
    if "hidden_chunks" in out:
        hidden_chunks(out["hidden_chunks"])
    if "drift_anchor" in out:
        drift_anchor(out["drift_anchor"])
    return {**out, "policy_args": stream}


def _has_abs_pos(dit_file: Path | None) -> bool:
    """Whether a DiT checkpoint (a dit.safetensors, or None) holds an absolute position embedding."""
    if dit_file is None or not dit_file.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(dit_file), "pt") as f:
        return "abs_pos" in f.keys()


def _init_config(dit_file: Path | None) -> dict:
    """The model config stored with a DiT checkpoint (a dit.safetensors, or None: {})."""
    if dit_file is None or not dit_file.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(dit_file), "pt") as f:
        return json.loads((f.metadata() or {}).get("config", "{}"))


def resolve_path(p: str | Path) -> Path:
    """A recipe path: absolute, or relative to the repository (so `init = "streamer/weights"` works from anywhere)."""
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    return Path(__file__).parent.parent.parent / p


def dit_batch(world, rng, r, vae, text_enc, tracks_enc, n_video, n_lat, chunk, device, blocks=None,
              with_clips: bool = False, text_offset: int = 0, gap: int = 0):
    """Latents x0 [B, C, n_lat, h, w], text embeddings, track channels [B, C_track, n_lat, h, w] and
    sprite cells [B, 1, n_lat, h, w] (`sprite_cells`) of a batch of fresh clips (with_clips: then
    also the clips and the text-only mask, bool [B], for `rerender`). Tracks are dropped per
    block (p = track_dropout) and, with p = text_only, for the whole clip (a prompt alone must make its
    sprites); text-only clips always keep their prompt and, with `spawn_text`, are the world's
    text-only layout (World.clip(spawn=True): spawn points, fixed bounce). text_offset > 0 (video
    frames; for video starts, whose clean first block shows the motion): each text-only clip starts
    at a frame drawn uniformly from [0, text_offset) of its motion, so the batch shows the layout's
    bounces off the walls, which a 33-frame clip from the spawn point never reaches.
    Clips with tracks: r["track_offset"] (video frames, any layout) starts each at a frame drawn
    uniformly from [0, track_offset) of its motion, so crossing sprites leave the frame, stay out
    and come back within the clip (from frame 0, a 33-frame clip mostly shows a crossing sprite
    entering); r["cross_share"] is the share of their sprites that cross (the world's: 0.15);
    r["exit_start"] the share of them placed 4-16 frames before every sprite has left the view.
    gap > 0 (latent frames; `sink_layout`): Deep Sink's layout. The first block (`chunk` latent
    frames) is the clip's start, and the blocks after it are the same clip `gap` latent frames
    further on: latent frames 0..chunk-1, then chunk+gap.. of one stream. A Deep Sink stream's
    chunk k >= 3 sees exactly this: its first chunk as sinks, re-aligned right before chunk k-1
    (gap = chunk * (k - 2)); an image start's (`sink_layout_image`, blocks (chunk,) * n) sees
    gap = 1 + chunk * m, as its chunks start one latent frame after a chunk boundary. The later
    frames are encoded from a clip that starts 4 video frames before them, so each is a 4-frame
    latent frame as mid-stream (the autoencoder's first latent frame holds one video frame). The
    clips returned are then the later ones."""
    from streamer.models.wan import block_index

    seeds = [int(rng.integers(1 << 30)) for _ in range(r["batch"])]
    text_only = (rng.random(r["batch"]) < r["text_only"]) if r.get("text_only") else np.zeros(r["batch"], bool)
    # drawn only when asked, so the recipes before text_only_offset draw the clips they drew
    offsets = rng.integers(0, text_offset, r["batch"]) * text_only if text_offset > 0 else np.zeros(r["batch"], int)
    if r.get("track_offset", 0) > 0:  # likewise: drawn only when asked
        offsets = offsets + rng.integers(0, int(r["track_offset"]), r["batch"]) * ~text_only
    tracked_world = world
    if r.get("cross_share") is not None:
        # the other motions keep their relative weights; only clips with tracks (a prompt alone's
        # sprites bounce in the text-only layout, whatever their drawn motion)
        rest = np.asarray(world.config.motion_weights[:-1], np.float64)
        share = float(r["cross_share"])
        tracked_world = World(replace(world.config, motion_weights=(*(rest / rest.sum() * (1 - share)), share)))
    if r.get("exit_start"):
        # a share of them start 4-16 frames before a frame where every sprite has left the view (the
        # offset's range holds one): the truth then shows no sprite while the track channels are zero,
        # as in a prompt alone, whose rule spawns one (v8 does, 1 chunk after a track leaves)
        for i in np.nonzero(~text_only)[0]:
            if rng.random() >= r["exit_start"]:
                continue
            traj = tracked_world.trajectory(tracked_world.scene(seeds[i]), int(r["track_offset"]) + n_video)
            gone = ~traj.visible.any(1)
            exits = np.nonzero(gone[1:] & ~gone[:-1])[0] + 1
            exits = exits[(exits >= 16) & (exits < int(r["track_offset"]))]
            if len(exits):
                offsets[i] = int(rng.choice(exits)) - int(rng.integers(4, 17))
    if gap and blocks is not None and any(b != chunk for b in ((blocks,) if isinstance(blocks, int) else blocks)):
        raise ValueError("gap (Deep Sink's layout) takes blocks of `chunk` latent frames, not an image start's")
    head = 1 + 4 * (chunk - 1) if gap else n_video  # with a gap: the first block's video frames only
    clips = [(world if t else tracked_world).clip(s, head, paraphrase=r["paraphrase"],
                                                  spawn=bool(t and r.get("spawn_text")), offset=int(o))
             for s, t, o in zip(seeds, text_only, offsets)]
    # the batch's pieces of stream: (clips, the latent frames of theirs it keeps)
    pieces = [(clips, range(chunk if gap else n_lat))]
    if gap:
        # stream latent frame j >= 1 holds video frames 4j-3..4j: a clip from video frame 4(j0-1)
        # has them as its latent frames 1.. (its latent frame 0, one video frame, is dropped)
        j0 = chunk + gap
        late = [(world if t else tracked_world).clip(s, 1 + 4 * (n_lat - chunk), spawn=bool(t and r.get("spawn_text")),
                                                     offset=int(o) + 4 * (j0 - 1))
                for s, t, o in zip(seeds, text_only, offsets)]
        pieces.append((late, range(1, n_lat - chunk + 1)))
    with torch.no_grad():
        x0 = torch.cat([vae.encode(to_video(np.stack([c.frames for c in cs])).to(device))[:, :, kept.start : kept.stop]
                        for cs, kept in pieces], 2)
    prompts = [c.prompt if (t_only or rng.random() >= r["text_dropout"]) else " " for c, t_only in zip(clips, text_only)]
    # clone: the text encoder runs in inference mode, and an fp32 (non-autocast) step would save its
    # output for backward
    text = text_enc.encode(prompts).to(device).clone()
    h, w = x0.shape[-2:]
    tracks = torch.stack([torch.cat([tracks_enc(cs[b].trajectory, list(kept), (h, w))[0] for cs, kept in pieces], 1)
                          for b in range(len(clips))]).to(device)
    idx = block_index(n_lat, blocks if blocks is not None else chunk)
    keep = rng.random((r["batch"], int(idx[-1]) + 1)) >= r["track_dropout"]
    if r.get("keep_first_tracks") and (blocks is None or isinstance(blocks, int)):
        # the world's rule: a stream whose first chunk has no tracks is in the spawn layout, which a
        # random-layout clip without its first chunk's tracks contradicts (in phase 6's mix, 17% of
        # the track-free first chunks). Removing it alone barely strengthened a prompt alone's weak
        # first sprite (docs/model_history.md, "v7"). An image start shows where its sprites are, so its first
        # chunk may lose them.
        keep[:, 0] = True
    keep[text_only] = False
    keep = torch.from_numpy(keep).float()[:, idx]
    tracks = tracks * keep[:, None, :, None, None].to(device)
    cells = torch.cat([sprite_cells(cs, kept.stop, (h, w))[:, :, kept.start :] for cs, kept in pieces], 2)
    out = x0, text, tracks, cells.to(device)
    return (*out, pieces[-1][0], text_only) if with_clips else out


def own_starts(world: World, clip, frame: np.ndarray, within: float, tol: float = 90.0) -> np.ndarray:
    """float [n, 2] (x, y pixels): where a model drew the n sprites of a text-only clip in a frame
    (uint8 [H, W, 3], its first video frame): the centroid of each sprite's colour (RGB distance <
    tol, at least 6 pixels) within `within` px of the sprite's spawn point, else the spawn point (a
    sprite the model did not draw there keeps the world's rule)."""
    from streamer.world.evaluate import has_colour

    spawn = world.spawn_points(len(clip.scene.sprites))
    yy, xx = np.mgrid[: frame.shape[0], : frame.shape[1]]
    starts = spawn.copy()
    for n, sprite in enumerate(clip.scene.sprites):
        near = (xx - spawn[n, 0]) ** 2 + (yy - spawn[n, 1]) ** 2 < within ** 2
        hit = near & has_colour(frame, sprite.rgb, tol)
        if hit.sum() >= 6:
            starts[n] = xx[hit].mean(), yy[hit].mean()
    return starts


@torch.no_grad()
def rerender(world: World, vae, clips, first: torch.Tensor, n_video: int, r: dict):
    """The truth of text-only clips continued from where the model put their sprites: each clip of
    the world's text-only layout re-rendered with its sprites starting where the model's first
    latent frame (first [B, C, 1, h, w], decoded) shows them (`own_starts`, within `rerender_within`
    px of the spawn point, default 16: two latent cells), with the world's heading and speed.
    The idea: without it the loss asks a sprite the model placed a few pixels off the centre (RoPE
    gives the DiT no absolute position) to jump there, whose least-squares answer is a faint sprite
    spread over both places. Tried with `sample_loss`, it changed nothing measurable (docs/model_history.md, "After v7").
    Returns (x0 [B, C, n_lat, h, w], sprite cells, clips)."""
    from streamer.models.frames import video_to_uint8

    frames = video_to_uint8(vae.decode(first.float()))[:, 0]  # [B, H, W, 3]
    within = float(r.get("rerender_within", 16.0))
    new = [world.clip(c.scene.seed, n_video, paraphrase=r["paraphrase"], spawn=True,
                      starts=own_starts(world, c, f, within)) for c, f in zip(clips, frames)]
    x0 = vae.encode(to_video(np.stack([c.frames for c in new])).to(first.device))
    return x0, sprite_cells(new, x0.shape[2], x0.shape[-2:]).to(first.device), new


def sample_loss(model, vae, world, rng, r, text_enc, chunk: int, device: torch.device) -> torch.Tensor:
    """Self-Forcing's loss on the model's own sample, against this world's truth: a batch of
    text-only clips (the world's text-only layout, prompt only); their first chunk is sampled from
    noise by the few-step sampler (SamplerConfig, or `rollout_steps`), without gradient up to an
    exit step drawn uniformly (as Self-Forcing draws it per chunk), and the x0 prediction of that
    step, with gradient, is regressed on the truth (`rerender`ed from where that prediction put the
    sprites when `rerender` is set). Flow matching trains x0 predictions on noised truths; this
    trains them on the inputs the sampler feeds them, its own earlier predictions re-noised, which
    for a prompt alone hold a faint sprite (first chunk: 0.58 of the true sprite's latent at the
    best place; with tracks 0.94). Weights: 1 + sprite_weight on sprite cells,
    `sample_background` (default 0.1) elsewhere (the background texture is the model's own draw,
    so regressing it on the truth's would blur it). Returns the scalar loss."""
    from streamer.sampler import SamplerConfig

    n_video = 1 + 4 * (chunk - 1)
    seeds = [int(rng.integers(1 << 30)) for _ in range(r["batch"])]
    clips = [world.clip(s, n_video, paraphrase=r["paraphrase"], spawn=True) for s in seeds]
    with torch.no_grad():
        x0 = vae.encode(to_video(np.stack([c.frames for c in clips])).to(device))
    text = model.encode_text(text_enc.encode([c.prompt for c in clips]).to(device).clone())
    b, _, _, h, w = x0.shape
    tracks = torch.zeros(b, r["track_dim"], chunk, h, w, device=device)
    times = SamplerConfig(**({"steps": tuple(r["rollout_steps"])} if r.get("rollout_steps") else {})).timesteps()
    exit_step = int(rng.integers(len(times)))
    x = torch.randn_like(x0)
    for i, t in enumerate(times):
        tt = torch.full((b, chunk), float(t), device=device)
        with torch.set_grad_enabled(i == exit_step):
            x0_hat = x - t / 1000 * model(x, tt, text, chunk_frames=chunk, tracks=tracks).float()
        if i == exit_step:
            break
        nxt = times[i + 1] / 1000
        x = (1 - nxt) * x0_hat + nxt * torch.randn_like(x0_hat)
    if r.get("rerender"):
        x0, sprites, _ = rerender(world, vae, clips, x0_hat[:, :, :1].detach(), n_video, r)
    else:
        sprites = sprite_cells(clips, chunk, (h, w)).to(device)
    bg = float(r.get("sample_background", 0.1))
    weight = bg + (1.0 + r.get("sprite_weight", 0.0) - bg) * sprites
    return (((x0_hat - x0) ** 2) * weight).mean()


GHOST_SHIFT = (24, 400)  # video frames: how far along its own path a ghost runs ahead of or behind its sprite


def ghost_batch(world: World, rng: np.random.Generator, r: dict, vae, text_enc, n_lat: int, chunk: int,
                device: torch.device):
    """A batch of a prompt alone's clips (the world's text-only layout, from a frame drawn in
    [0, text_only_offset or 480) of its motion) in which one named sprite shows twice in the video
    frames of the second block only: the copy (a "ghost", same shape, colour and size) is the sprite
    on its own path GHOST_SHIFT video frames earlier or later, at least two radii plus 4 px away from
    it throughout; with `ghost_alpha` = [lo, hi] it is blended in at an opacity drawn from that range
    (a faint copy, as a stream's second sprite often is). The third block's truth has no ghost.

    Why: a prompt alone's stream from the shipped model draws its colour as a second sprite-sized
    blob in 14% of its frames (eight prompts x 60 s), none in the first 3 s, then more as the stream
    goes on, and the copy moves like the sprite, far from both the sprite and its start (the sink),
    so it is a second sprite that later chunks keep, not a smear (docs/model_history.md, "After v11,
    part 3"). No training clip ever shows a history with more sprites than the prompt
    names, so nothing teaches what comes next; here the next chunk drops the copy.

    The second block has no loss (its truth shows the copy appear, which is not to be learned); the
    cells where the copy was at the end of that block and would have gone in the third block get
    the sprite weight, so the loss asks for background there.

    Returns x0 [B, C, n_lat, h, w] (latents of the clips with the ghost), text embeddings, tracks
    (zeros [B, track_dim, n_lat, h, w]), the sprite weight map [B, 1, n_lat, h, w] for `flow_loss`'s
    `sprites` (the true sprites' cells, and the ghost's in the third block) and its `cell_weight`
    (0 on the second block, 1 elsewhere). Raises ValueError unless n_lat >= 3 * chunk."""
    from types import SimpleNamespace

    from streamer.trajectory import Trajectory

    if n_lat < 3 * chunk:
        raise ValueError(f"ghost needs latent_frames >= 3 x chunk_frames, got {n_lat} and {chunk}")
    n_video = 1 + 4 * (n_lat - 1)
    first, last = 4 * chunk - 3, 4 * (2 * chunk - 1)  # video frames of the second block (latent frames chunk..2chunk-1)
    span = int(r.get("text_only_offset") or 480)
    clips, ghosts = [], []
    for _ in range(r["batch"]):
        seed, offset = int(rng.integers(1 << 30)), int(rng.integers(0, span))
        clip = world.clip(seed, n_video, paraphrase=r["paraphrase"], spawn=True, offset=offset)
        n = int(rng.integers(len(clip.scene.sprites)))
        sprite = clip.scene.sprites[n]
        for _ in range(20):  # a shift that keeps the copy apart from every sprite in the second block
            shift = int(rng.integers(*GHOST_SHIFT)) * (1 if rng.random() < 0.5 else -1)
            start = max(0, offset + shift)
            path = world.trajectory(clip.scene, start + n_video).tracks[start:, n]
            gap = np.linalg.norm(clip.trajectory.tracks[first : last + 1] - path[first : last + 1, None], axis=-1)
            if gap.min() >= 2 * sprite.radius + 4:
                break
        frames = clip.frames.copy()
        # the copy's opacity (`ghost_alpha` = [lo, hi], drawn per clip; default 1): a faint copy too
        alpha = float(rng.uniform(*r["ghost_alpha"])) if r.get("ghost_alpha") else 1.0
        for t in range(first, last + 1):
            drawn = frames[t].copy()
            world.draw(drawn, sprite, float(path[t, 0]), float(path[t, 1]))
            frames[t] = np.rint((1 - alpha) * frames[t] + alpha * drawn) if alpha < 1 else drawn
        clips.append(replace(clip, frames=frames))
        traj = Trajectory(path[:, None].copy(), np.ones((n_video, 1), bool), clip.trajectory.fps,
                          clip.trajectory.width, clip.trajectory.height)
        ghosts.append(SimpleNamespace(trajectory=traj, scene=SimpleNamespace(sprites=[sprite])))
    x0, text, tracks, weight, cells = _second_block_batch(clips, r, vae, text_enc, n_lat, chunk, device)
    h, w = x0.shape[-2:]
    copy = sprite_cells(ghosts, n_lat, (h, w)).to(device)
    # the third block on: where the copy was as the second block ended, and where it would have gone
    gone = torch.maximum(copy[:, :, 2 * chunk :], copy[:, :, 2 * chunk - 1 : 2 * chunk])
    weight[:, :, 2 * chunk :] = torch.maximum(weight[:, :, 2 * chunk :], gone)
    return x0, text, tracks, weight, cells


def _second_block_batch(clips, r: dict, vae, text_enc, n_lat: int, chunk: int, device: torch.device):
    """What `ghost_batch` and `fade_batch` return for their edited prompt-alone clips: latents x0
    [B, C, n_lat, h, w], text embeddings, zero tracks [B, track_dim, n_lat, h, w], the true sprites'
    cells [B, 1, n_lat, h, w] (`sprite_cells`) and a cell weight that is 0 on the second block (the
    edited one, whose truth is not to be learned) and 1 elsewhere."""
    with torch.no_grad():
        x0 = vae.encode(to_video(np.stack([c.frames for c in clips])).to(device))
    h, w = x0.shape[-2:]
    text = text_enc.encode([c.prompt for c in clips]).to(device).clone()
    tracks = torch.zeros(len(clips), r["track_dim"], n_lat, h, w, device=device)
    weight = sprite_cells(clips, n_lat, (h, w))
    cells = torch.ones_like(weight)
    cells[:, :, chunk : 2 * chunk] = 0.0
    return x0, text, tracks, weight.to(device), cells.to(device)


FADE_ALPHA = (0.2, 0.7)  # default `fade_alpha`: the opacity a fading sprite is left with at the second block's end


def fade_batch(world: World, rng: np.random.Generator, r: dict, vae, text_enc, n_lat: int, chunk: int,
               device: torch.device):
    """A batch of a prompt alone's clips (the world's text-only layout, from a frame drawn in
    [0, text_only_offset or 480) of its motion) whose sprites fade in the second block: over its
    video frames they are blended into the clip's own background at an opacity (0-1) falling linearly
    to `a` at its last frame (1 - (1 - a) k / K at its k-th of K frames), `a` drawn per clip from
    `fade_alpha` = [lo, hi] (default FADE_ALPHA); r needs batch, paraphrase and track_dim. The third block's
    truth shows them whole again, on their path.

    Why: over sixteen held-out prompts, the shipped model (v13) loses a light sprite on a light
    background (white, green or yellow on sand or snow) in 34-81% of a minute's frames: the sprite
    forms, then fades into the background over a few chunks and stays gone, or comes back late
    (docs/model_history.md, "After v13, part 5"). Every history in training shows the sprites whole,
    so nothing teaches the next chunk what to do with a faint one; here it restores it. A faint
    sprite still shows where it is, so its whole return has one answer (a sprite gone altogether
    would not: its place is lost). Tried in one 40-min round from v13 (`recipes/tried/fade_G.toml`):
    the light sprites were found as often as before, so a faint history is not all that loses them.

    The second block has no loss (its truth, the fade, is not to be learned). Returns what
    `ghost_batch` does: x0 [B, C, n_lat, h, w], text embeddings, tracks (zeros), the true sprites'
    cells [B, 1, n_lat, h, w] and the cell weight (0 on the second block, 1 elsewhere). Raises
    ValueError unless n_lat >= 3 * chunk."""
    if n_lat < 3 * chunk:
        raise ValueError(f"fade needs latent_frames >= 3 x chunk_frames, got {n_lat} and {chunk}")
    n_video = 1 + 4 * (n_lat - 1)
    first, last = 4 * chunk - 3, 4 * (2 * chunk - 1)  # video frames of the second block (latent frames chunk..2chunk-1)
    span = int(r.get("text_only_offset") or 480)
    lo, hi = r.get("fade_alpha", FADE_ALPHA)
    clips = []
    for _ in range(r["batch"]):
        seed, offset = int(rng.integers(1 << 30)), int(rng.integers(0, span))
        clip = world.clip(seed, n_video, paraphrase=r["paraphrase"], spawn=True, offset=offset)
        alpha = float(rng.uniform(lo, hi))
        frames = clip.frames.copy()
        bg = clip.background.astype(np.float32)
        for i, t in enumerate(range(first, last + 1)):
            opacity = 1.0 - (1.0 - alpha) * (i + 1) / (last - first + 1)
            frames[t] = np.clip(np.rint(bg + opacity * (frames[t].astype(np.float32) - bg)), 0, 255)
        clips.append(replace(clip, frames=frames))
    return _second_block_batch(clips, r, vae, text_enc, n_lat, chunk, device)


def sprite_cells(clips, n_lat: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """float [B, 1, n_lat, h, w]: 1 on latent cells a sprite covers (its radius plus half a cell from
    the cell's centre) in any video frame of that latent frame (frame 0 alone, then 4 per latent
    frame), else 0. The flow loss weights these (`sprite_weight`): a sprite is ~3% of the cells, so
    unweighted its error hardly moves the gradient (a prompt alone learned no sprite in 200 steps)."""
    h, w = latent_hw
    out = np.zeros((len(clips), 1, n_lat, h, w), np.float32)
    for b, clip in enumerate(clips):
        traj = clip.trajectory
        sx, sy = traj.width / w, traj.height / h
        yy, xx = np.meshgrid((np.arange(h) + 0.5) * sy, (np.arange(w) + 0.5) * sx, indexing="ij")
        for f in range(n_lat):
            for t in ([0] if f == 0 else range(4 * f - 3, 4 * f + 1)):
                for n, sp in enumerate(clip.scene.sprites):
                    x, y = traj.tracks[t, n]
                    out[b, 0, f] = np.maximum(out[b, 0, f], (xx - x) ** 2 + (yy - y) ** 2 < (sp.radius + max(sx, sy) / 2) ** 2)
    return torch.from_numpy(out)


def sigma_per_block(rng, b: int, blocks, n: int, shift: float) -> torch.Tensor:
    """One noise level per block [B, F]: uniform draws warped by the schedule shift (as the sampler's)."""
    from streamer.models.wan import block_index

    idx = block_index(n, blocks)
    u = torch.from_numpy(rng.random((b, int(idx[-1]) + 1))).float()
    return (shift * u / (1 + (shift - 1) * u))[:, idx]


def flow_loss(model, x0, text, tracks, rng, r, chunk, context=None, skip_first: bool = False,
              sprites: torch.Tensor | None = None, teacher=None, null_text: torch.Tensor | None = None,
              history_background: float = 1.0, cell_weight: torch.Tensor | None = None,
              background_cells: torch.Tensor | None = None) -> torch.Tensor:
    """Flow matching on the teacher-forcing shape: one noise level per block (as the sampler sees),
    timesteps drawn uniformly and warped by the schedule shift, so the few high-noise steps train most.

    chunk: chunk length, or block sizes (e.g. (1, 3, 3) for an image start). context: the clean
    history [B, C, F, h, w] the noisy blocks see (default: the true x0; a rollout for Self-Forcing
    against the truth). skip_first: no loss on the first block (an image start's given frame).
    sprites: [B, 1, F, h, w] sprite cells (sprite_cells), weighted 1 + r["sprite_weight"] (default 0).
    teacher: a frozen DiT (`load_teacher`): for the clips without any track, the target is then its
    text-guided flow at the same noisy input and history, v(null) + g (v(text) - v(null)) with g =
    r["guidance_scale"], instead of the data's (eps - x0): guidance distillation (Meng et al. 2023),
    so the student samples what the guided teacher samples in one model call per step. With
    r["guidance_target"] = "data" it is (eps - x0) + (g - 1) (v(text) - v(null)) instead: the
    data's flow plus the teacher's guidance direction (model guidance, Tang et al. 2025), which
    keeps the data's colours where the teacher's conditional flow gets them wrong. null_text
    [1, L, D]: the empty prompt's embedding. history_background: the weight of the background
    (non-sprite) cells in every block after the first, for a context sampled from noise: its
    background is the model's own invention, so the true clip's background is no continuation of it
    (the sprites' cells stay consistent: the tracks or the spawn layout place them). cell_weight
    [B, 1, F, h, w]: a further per-cell loss weight (`own_background`'s).

    background_cells (bool [B, 1, F, h, w]) with r["background_mean"] = w > 0: adds w x the squared
    mean, over those cells of each clip, latent frame and channel, of the predicted clean latents'
    error (x0 = x_t - sigma v against the target). The per-cell loss is dominated by what the noise
    leaves uncertain (the texture's grain); a bias shared by all background cells, a brightness the
    model adds to its history chunk after chunk, is a small part of it, and this term is that part
    alone (docs/model_history.md, "After v13, part 3: the background's brightness (tried, not shipped)")."""
    b, _, n, _, _ = x0.shape
    sigma = sigma_per_block(rng, b, chunk, n, r["timestep_shift"]).to(x0.device)  # [B, F]
    eps = torch.randn_like(x0)
    sig = sigma[:, None, :, None, None]
    xt = (1 - sig) * x0 + sig * eps
    # a little noise on the clean context: at inference the history is the model's own (imperfect) output
    base = x0 if context is None else context
    ctx = base + r.get("context_noise", 0.0) * torch.rand(b, 1, 1, 1, 1, device=x0.device) * torch.randn_like(x0)
    v = model(xt, sigma * 1000, text, chunk_frames=chunk, clean_x=ctx, tracks=tracks, clean_tracks=tracks)
    target = eps - x0
    # guided targets only for clips the model sees without any track: measured on v3, text guidance
    # 3.5 at inference took a prompt alone from 37% to 63% found, but with tracks it lost the sprite
    # (one scene 0.07 -> 0.97 missing) and doubled the background change
    free = (tracks == 0).flatten(1).all(1) if teacher is not None else None
    if free is not None and free.any():
        with torch.no_grad():  # one batch: the prompted half, then the empty-prompt half
            two = lambda a: torch.cat([a[free], a[free]])  # noqa: E731
            nulls = null_text.expand(int(free.sum()), -1, -1)
            vt = teacher(two(xt), two(sigma) * 1000, torch.cat([text[free], nulls]), chunk_frames=chunk,
                         clean_x=two(ctx), tracks=two(tracks), clean_tracks=two(tracks)).float()
            v_text, v_null = vt.chunk(2)
            target = target.clone()
            g = r["guidance_scale"]
            if r.get("guidance_target", "teacher") == "data":
                # model guidance (Tang et al. 2025, "Diffusion Models without Classifier-free
                # Guidance"): the data's flow plus (g - 1) x the teacher's guidance direction. Its
                # mean is the guided flow when the teacher is right, but where the teacher's v(text)
                # is wrong (v3 draws a yellow sprite orange) the data still pulls to the truth
                target[free] = target[free] + ((g - 1.0) * (v_text - v_null)).to(target.dtype)
            else:
                target[free] = (v_null + g * (v_text - v_null)).to(target.dtype)
    err = (v.float() - target) ** 2
    first = chunk if isinstance(chunk, int) else chunk[0]  # frames of the first block
    if sprites is not None and r.get("sprite_weight"):
        err = err * (1.0 + r["sprite_weight"] * sprites)
    if history_background != 1.0:
        if sprites is None:
            raise ValueError("history_background needs the sprite cells")
        keep = torch.ones_like(sprites)
        keep[:, :, first:] = history_background + (1.0 - history_background) * sprites[:, :, first:]
        err = err * keep
    if cell_weight is not None:
        err = err * cell_weight
    if skip_first:
        err = err[:, :, first:]
    loss = err.mean()
    if background_cells is not None and r.get("background_mean", 0.0) > 0:
        m = background_cells.float()
        x0_err = (xt.float() - sig * v.float()) - x0.float()  # [B, C, F, h, w]
        count = m.sum((3, 4))  # [B, 1, F]
        mean_err = (x0_err * m).sum((3, 4)) / count.clamp(min=1.0)  # [B, C, F]
        use = (count >= 4).expand_as(mean_err)  # a few cells make no mean
        if use.any():
            loss = loss + r["background_mean"] * (mean_err[use] ** 2).mean()
    return loss


def load_teacher(r: dict, model, device: torch.device, frozen: Path | None = None, fresh: bool = True):
    """The frozen guidance teacher of a fine-tune phase when it sets `guidance_scale` (else None):
    `guidance_teacher` = "start" (default) is the model as the phase starts, kept in `frozen` (a
    dit.safetensors in the run folder, written when the phase starts `fresh`, so a resumed phase
    keeps the same teacher); "phase N" is the teacher an earlier phase N of the same run kept (so a
    later phase goes on distilling the same guided model, not a guided copy of its own, which would
    compound the guidance); anything else is a folder with a dit.safetensors of the student's shape.
    Raises ValueError when that file is missing, or when `guidance_target` is not "teacher" or "data"
    (flow_loss)."""
    if not r.get("guidance_scale"):
        return None
    if r.get("guidance_target", "teacher") not in ("teacher", "data"):
        raise ValueError(f"guidance_target = {r['guidance_target']!r}: expected \"teacher\" (the teacher's guided "
                         "flow) or \"data\" (the data's flow plus the teacher's guidance direction)")
    import copy

    from safetensors.torch import load_file

    teacher = copy.deepcopy(model)
    source = r.get("guidance_teacher", "start")
    if source.startswith("phase"):
        number = source.removeprefix("phase").strip()
        if not number.isdigit():
            raise ValueError(f"guidance_teacher = {source!r}: expected \"phase N\" with N a whole number")
        if frozen is None:
            raise ValueError(f"guidance_teacher = {source!r} needs the run folder the teacher was kept in")
        path = frozen.parent / f"p{int(number)}_teacher.safetensors"
    else:
        path = frozen if source == "start" else resolve_path(source) / "dit.safetensors"
    if path is None:
        raise ValueError("guidance_teacher = \"start\" needs the run folder to keep the teacher in")
    if source == "start" and (fresh or not path.is_file()):
        save_dit(model, path)
    if not path.is_file():
        raise ValueError(f"guidance_teacher = {source!r}: no {path}")
    teacher.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return teacher.to(device).eval().requires_grad_(False)


@torch.no_grad()
def rollout_context(model, x0, text, tracks, blocks, n_chunks: int, r: dict, from_noise: bool = False) -> torch.Tensor:
    """The model's own few-step rollout as clean history: block 0 (the image start) is the truth,
    blocks 1..n_chunks are sampled one after another by the sampler of streamer/sampler.py (4 steps,
    shift 5), each attending block-causally to the clean history at t=0 (what the KV cache holds);
    later blocks keep the truth (no noisy block attends to them). x0 [B, C, F, h, w] -> same shape.
    from_noise: block 0 is sampled too (from noise, no history: a stream without a start image),
    then blocks 1..n_chunks-1, so n_chunks blocks in all are the model's own."""
    from streamer.sampler import SamplerConfig, denoise

    sizes = [blocks] * (x0.shape[2] // blocks) if isinstance(blocks, int) else list(blocks)
    ctx = x0.clone()
    text_ctx = model.encode_text(text)
    times = SamplerConfig(**({"steps": tuple(r["rollout_steps"])} if r.get("rollout_steps") else {})).timesteps()
    first = 0 if from_noise else 1
    start = sum(sizes[:first])
    for k in range(first, min(n_chunks - 1 + first, len(sizes) - 1) + 1):
        end = start + sizes[k]
        hist = ctx[:, :, :start]
        tr = tracks[:, :, :end]

        def flow(x, t, hist=hist, tr=tr, start=start):
            tt = torch.zeros(x.shape[0], start + x.shape[2], device=x.device)
            tt[:, start:] = t
            out = model(torch.cat([hist, x], 2), tt, text_ctx, chunk_frames=tuple(sizes[: k + 1]), tracks=tr)
            return out[:, :, start:].float()

        noise = torch.randn_like(x0[:, :, start:end])
        ctx[:, :, start:end] = denoise(flow, noise, times, None).to(ctx.dtype)
        start = end
    return ctx


def save_dit(model, path: Path, half: bool = False, extra: dict | None = None, state: dict | None = None) -> None:
    """Write `model` (or `state`, a state dict of it such as `WeightEMA.state_dict`) with its config."""
    from safetensors.torch import save_file

    sd = {k: (v.half() if half else v).contiguous() for k, v in (state or model.state_dict()).items()}
    meta = {"config": json.dumps(model.config.to_dict()), "kind": "causal-wan", **(extra or {})}
    save_file(sd, str(path), metadata=meta)


def ship(out: Path, dest: Path = WEIGHTS_DIR) -> None:
    """Copy a run's final weights into the package, the DiT in fp16 (halves the wheel size)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "vae.safetensors", dest / "vae.safetensors")
    if (out / "recipe.toml").is_file():
        shutil.copy(out / "recipe.toml", dest / "recipe.toml")
    with safe_open(str(out / "dit.safetensors"), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k).half().contiguous() for k in f.keys()}
    save_file(sd, str(dest / "dit.safetensors"), metadata=meta)


# ---- stage 3: a sharper autoencoder, the DiT re-fitted to it -------------------------------------
def train_refit(recipe: dict, init: Path, out: Path, log: Log, device: torch.device, resume: bool = False) -> None:
    """The [refit] stage (v9 on): `init`'s autoencoder trains on, encoder and decoder both
    ([refit.vae]'s keys over [vae]'s, without [vae]'s phases), so its latent space moves; then
    `init`'s DiT is fine-tuned on the new latents ([refit]'s keys and [[refit.phases]] over
    [finetune]'s keys, without [finetune]'s phases). Both write into `out`: vae.safetensors, then
    dit.safetensors. A DiT run on an autoencoder it was not trained on loses most of what it knew
    (docs/model_history.md, "After v8, part 3"); the re-fit keeps its motion and text binding and moves only its
    latent space, in under an hour on this CPU.
    `init`: a folder with dit.safetensors and vae.safetensors (check_inits has checked the recipe)."""
    rf = recipe["refit"]
    out.mkdir(parents=True, exist_ok=True)
    vae_keys = {k: v for k, v in recipe.get("vae", {}).items() if k != "phases"}
    vae = train_vae({**recipe, "vae": {**vae_keys, **rf["vae"], "init": str(init)}}, out, log, device, resume=resume)
    ft_keys = {k: v for k, v in recipe.get("finetune", {}).items() if k != "phases"}
    refit_keys = {k: v for k, v in rf.items() if k != "vae"}
    log(f"refit: the DiT from {init} on the new autoencoder")
    train_dit({**recipe, "finetune": {**ft_keys, **refit_keys, "init": str(init)}}, vae, out, log, device,
              resume=resume, section="finetune", label="refit")


# ---- stage 4: the decoder alone ------------------------------------------------------------------
def train_decoder(recipe: dict, init: Path, out: Path, log: Log, device: torch.device, resume: bool = False) -> None:
    """The [decoder] stage (v17 on): `init`'s decoder trains on alone ([decoder]'s keys over [vae]'s,
    without [vae]'s phases; the encoder frozen, so the latent space and `init`'s DiT, copied beside
    it, stay valid). v17's round asks the decoded change from frame to frame to be the truth's
    (`temporal_weight`): the stream had shown a flicker along the frame's edges between a latent
    frame's four video frames (docs/model_history.md, "After v16"). Writes vae.safetensors and
    dit.safetensors into `out`: `init`'s DiT tensors bit for bit, its "step" label saying that the
    decoder was retrained (`streamer --version` shows the label's head).
    `init`: a folder with both (check_inits has checked the recipe)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if not (resume and (out / "dit.safetensors").is_file()):  # never a DiT left in `out` by another run
        with safe_open(str(init / "dit.safetensors"), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        head, _, rest = meta.get("step", "").partition(":")
        meta["step"] = f"{head or init.name} with its decoder retrained ([decoder] stage)" + (f":{rest}" if rest else "")
        save_file(tensors, str(out / "dit.safetensors"), metadata=meta)
    vae_keys = {k: v for k, v in recipe.get("vae", {}).items() if k != "phases"}
    log(f"decoder: {init}'s decoder alone, its encoder and DiT kept")
    train_vae({**recipe, "vae": {**vae_keys, **recipe["decoder"], "init": str(init), "freeze_encoder": True}},
              out, log, device, resume=resume)


# ---- CLI ---------------------------------------------------------------------------------------
def smoke_recipe(recipe: dict, steps: int) -> dict:
    """The recipe cut to `steps` steps per stage (autoencoder phases, DiT, fine-tune), batches of 2 and
    2 clips for the latent statistics: every stage runs and connects, in seconds (tests, dry runs)."""
    cut = lambda sec: {**sec, "steps": min(sec.get("steps", steps), steps), "batch": min(sec.get("batch", 2), 2)}  # noqa: E731
    out = dict(recipe)
    if "vae" in recipe:  # a fine-tune-only recipe has none
        vae = cut(recipe["vae"])
        vae["stats_clips"] = min(vae.get("stats_clips", 2), 2)
        if "phases" in vae:
            vae["phases"] = [cut(ph) for ph in vae["phases"]]
        out["vae"] = vae
    for name in ("dit", "finetune", "refit"):
        if name in recipe:
            out[name] = {**cut(recipe[name]), "checkpoint_every": 1, "bf16": False}  # wiring, not speed
            if "phases" in recipe[name]:
                out[name]["phases"] = [cut(ph) for ph in recipe[name]["phases"]]
    if "vae" in recipe.get("refit", {}):
        out["refit"]["vae"] = {**cut(recipe["refit"]["vae"]), "stats_clips": 2}
    if "decoder" in recipe:
        out["decoder"] = {**cut(recipe["decoder"]), "stats_clips": 2}
    return out


# every key a training section ([vae], [dit], [finetune] and their [[...phases]]) may set; a key
# outside it is a typo that would otherwise train with the default silently
TRAINING_KEYS = frozenset("""
    abs_pos_lr_scale absolute_positions anchor_weight background_mean batch bf16 border_weight checkpoint_every chunk_frames context_noise crop ema_decay frames
    freeze_encoder guidance_p guidance_scale guidance_target guidance_teacher halo_weight history_bias image_chunks image_start init
    cross_share exit_start fade fade_alpha ghost ghost_alpha keep_every keep_first_tracks latent_frames latent_l2 latent_noise lr max_minutes noise_rollout
    noise_rollout_background own_background own_background_from own_background_sprites own_background_text paraphrase phases preset rerender rerender_within rollout rollout_chunks
    rollout_steps sample_background sample_loss sink_gap sink_layout sink_layout_image soup_with_start spawn_text sprite_weight stats_clips steady_weight steps
    temporal_weight
    stop_step text_dropout text_encoder text_only text_only_offset time_schedule
    timestep_shift track_dim track_dropout track_offset track_outside video_start warmup weight_decay""".split())
TOP_KEYS = frozenset("name seed threads world vae dit finetune refit decoder sampler stream".split())


def check_recipe_keys(recipe: dict) -> None:
    """Every key of the recipe is one `streamer train` reads. Raises ValueError (one line) naming
    the section and the unknown key, with the closest known one ([world]: `world_config`'s)."""
    import difflib

    def unknown(keys, known, where: str) -> None:
        for key in keys:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                raise ValueError(f"recipe {where}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))

    unknown(recipe, TOP_KEYS, "top level")
    sections = {s: recipe.get(s, {}) for s in ("vae", "dit", "finetune", "decoder")}
    refit = recipe.get("refit", {})
    if refit:  # [refit.vae] is an autoencoder section; the rest of [refit] a fine-tune's
        sections["refit.vae"] = refit.get("vae", {})
        sections["refit"] = {k: v for k, v in refit.items() if k != "vae"}
    for section, sec in sections.items():
        unknown(sec, TRAINING_KEYS, f"[{section}]")
        for i, phase in enumerate(sec.get("phases", [])):
            unknown(phase, TRAINING_KEYS - {"phases"}, f"[{section}] phase {i}")
    world_config(recipe)  # [world]: a known preset, known settings, good values


def check_inits(recipe: dict, stage: str) -> None:
    """Every weights folder the run will start from exists, checked before any stage trains (a
    missing DiT init would otherwise fail only after the autoencoder's 36 minutes).
    Raises ValueError (one line) naming the recipe key."""
    if stage == "finetune" and "init" not in recipe.get("finetune", {}):
        raise ValueError("--stage finetune: the recipe's [finetune] needs init = <folder with dit + vae "
                         "safetensors> (--stage all fine-tunes its own DiT)")
    need = [("dit", "dit.safetensors")] if stage in ("all", "dit") and recipe.get("dit", {}).get("init") else []
    if stage in ("all", "vae") and recipe.get("vae", {}).get("init"):
        need.append(("vae", "vae.safetensors"))
    if stage == "finetune":
        need = [("finetune", "dit.safetensors"), ("finetune", "vae.safetensors")]
    if stage == "refit":
        if "refit" not in recipe or "init" not in recipe["refit"]:
            raise ValueError("--stage refit: the recipe needs a [refit] section with init = <folder with dit + "
                             "vae safetensors> (--stage all re-fits its own fine-tune)")
        need = [("refit", "dit.safetensors"), ("refit", "vae.safetensors")]
    if stage == "decoder":
        if "init" not in recipe.get("decoder", {}):
            raise ValueError("--stage decoder: the recipe needs a [decoder] section with init = <folder with dit + "
                             "vae safetensors> (--stage all trains on its own re-fit's decoder)")
        need = [("decoder", "dit.safetensors"), ("decoder", "vae.safetensors")]
    if stage in ("all", "refit") and "refit" in recipe and "vae" not in recipe["refit"]:
        raise ValueError("recipe [refit]: needs a [refit.vae] section (the autoencoder round before the re-fit)")
    for section, name in need:
        path = resolve_path(recipe[section]["init"]) / name
        if not path.is_file():
            raise ValueError(f"recipe [{section}] init: no {path} (the recipe's header or its comments at "
                             f"[{section}] say how to fetch it)")


def check_phases(recipe: dict) -> None:
    """check_phase on every DiT phase the recipe can run ([dit], [finetune] and [refit], each phase
    with the keys it inherits, as train_dit and train_refit merge them), before any stage trains."""
    dit = {k: v for k, v in recipe.get("dit", {}).items() if k != "phases"}
    ft = {k: v for k, v in recipe.get("finetune", {}).items() if k != "phases"}
    rf = {k: v for k, v in recipe.get("refit", {}).items() if k not in ("phases", "vae")}
    for base, phases in ((dit, recipe.get("dit", {}).get("phases")),
                         ({**dit, **ft}, recipe.get("finetune", {}).get("phases")),
                         ({**dit, **ft, **rf}, recipe.get("refit", {}).get("phases"))):
        for ph in phases or [{}]:
            check_phase({**base, **ph})


def cmd_train(args) -> int:
    recipe = load_recipe(args.recipe)
    check_recipe_keys(recipe)
    check_phases(recipe)
    check_inits(recipe, args.stage)
    stream_metadata(recipe)  # [stream] is checked now, not at the first checkpoint
    if args.smoke:
        recipe = smoke_recipe(recipe, args.smoke)
    torch.set_num_threads(int(args.threads or recipe.get("threads", 2)))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "recipe.toml").exists() or not (out / "recipe.toml").samefile(args.recipe):
        shutil.copy(args.recipe, out / "recipe.toml")  # a resumed run may be given the run's own copy
    log = Log(out / "train.log", echo=not args.quiet)
    t0 = time.time()
    if args.stage == "finetune":
        # the autoencoder stays the one the init DiT was trained on (same latents)
        init = resolve_path(recipe["finetune"]["init"])
        if not (out / "vae.safetensors").is_file():
            shutil.copy(init / "vae.safetensors", out / "vae.safetensors")
        vae = TinyVAE.from_file(out / "vae.safetensors", device=device)
        train_dit(recipe, vae, out, log, device, resume=args.resume, section="finetune")
    elif args.stage in ("all", "vae"):
        vae = train_vae(recipe, out, log, device, resume=args.resume)
    elif args.stage == "dit":
        vae = TinyVAE.from_file(out / "vae.safetensors", device=device)
    if args.stage in ("all", "dit"):
        train_dit(recipe, vae, out, log, device, resume=args.resume)
    if args.stage == "all" and "finetune" in recipe:
        # from scratch, the fine-tune starts from this run's DiT (not the shipped one); its own folder
        ft = out / "finetune"
        ft.mkdir(exist_ok=True)
        shutil.copy(out / "vae.safetensors", ft / "vae.safetensors")
        ft_recipe = {**recipe, "finetune": {**recipe["finetune"], "init": str(out.resolve())}}
        train_dit(ft_recipe, vae, ft, log, device, resume=args.resume, section="finetune")
        out = ft
        if "refit" in recipe:  # and the re-fit continues the fine-tune's weights, in a folder of its own
            train_refit(recipe, ft, ft / "refit", log, device, resume=args.resume)
            out = ft / "refit"
        if "decoder" in recipe:  # then the decoder alone, on the last stage's weights
            train_decoder(recipe, out, out / "decoder", log, device, resume=args.resume)
            out = out / "decoder"
    elif args.stage == "refit":
        train_refit(recipe, resolve_path(recipe["refit"]["init"]), out, log, device, resume=args.resume)
    elif args.stage == "decoder":
        train_decoder(recipe, resolve_path(recipe["decoder"]["init"]), out, log, device, resume=args.resume)
    log(f"training wall time {(time.time() - t0) / 60:.1f} min")
    if args.ship:
        ship(out)  # the run's last stage
        log(f"shipped weights to {WEIGHTS_DIR}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the default world model from a recipe",
                              description="Reproduce the shipped default model from a recipe: the autoencoder, the DiT "
                                          "(teacher forcing), the fine-tune on its own rollouts, the re-fit, then the decoder alone.")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe .toml (default: recipes/default.toml)")
    p.add_argument("--out", default="runs/default", help="output folder (checkpoints, train.log)")
    p.add_argument("--stage", choices=["all", "vae", "dit", "finetune", "refit", "decoder"], default="all",
                   help="all: every section in order; vae / dit: that stage alone; finetune: the [finetune] "
                        "section from its init weights (autoencoder kept); refit: the [refit] section from its init "
                        "(the init's autoencoder trained on, then the init's DiT re-fitted to its new latents); "
                        "decoder: the [decoder] section from its init (the init's decoder alone, its encoder and "
                        "DiT kept)")
    p.add_argument("--resume", action="store_true",
                   help="continue: skip finished autoencoder phases, continue the DiT from <out>/dit_last.pt")
    p.add_argument("--ship", action="store_true", help="copy the final weights into streamer/weights/")
    p.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    p.add_argument("--threads", type=checks.int_in(1, 1024), help="torch CPU threads (default: the recipe's)")
    p.add_argument("--smoke", type=checks.int_in(1, 1_000_000), metavar="STEPS",
                   help="cut every stage to this many steps with batches of 2: checks a recipe end to end in seconds")
    p.add_argument("--quiet", action="store_true",
                   help="log to <out>/train.log only: no log lines or progress bars on the terminal")
    p.set_defaults(func=cmd_train)
