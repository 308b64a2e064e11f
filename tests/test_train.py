"""Training: a few optimizer steps reduce the loss on a fixed batch (DiT and autoencoder), and the
batch builder gives the shapes the teacher-forcing forward expects."""

import numpy as np
import pytest
import torch

from streamer.models.tiny_vae import TinyVAE, TinyVAEConfig
from streamer.models.trajectory_encoder import TrajectoryEncoder
from streamer.models.wan import CausalWanModel, get_config
from streamer.world.train import flow_loss, load_recipe, to_video, DEFAULT_RECIPE
from streamer.trajectory import Trajectory
from streamer.world.scenes import World


class _ZeroText:
    """A text encoder stub for dit_batch tests: zero embeddings [B, 4, 8]."""

    def encode(self, prompts):
        return torch.zeros(len(prompts), 4, 8)


class _IdentityVae:
    """An autoencoder stub whose "latents" are the frames themselves, so a test sees what was drawn."""

    def encode(self, video):
        return video


def test_dit_steps_reduce_loss_on_fixed_batch():
    torch.manual_seed(0)
    cfg = get_config("tiny", track_channels=8)
    model = CausalWanModel(cfg)
    x0 = torch.randn(2, 16, 6, 4, 4)
    text = torch.randn(2, cfg.text_len, cfg.text_dim)
    tracks = torch.randn(2, 8, 6, 4, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    r = {"timestep_shift": 5.0}

    def loss_fn():
        torch.manual_seed(1)  # same noise and timesteps every step: a fixed batch
        return flow_loss(model, x0, text, tracks, np.random.default_rng(0), r, 3)

    first = loss_fn().item()
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.7 * first


def test_vae_steps_reduce_loss_on_fixed_batch():
    torch.manual_seed(0)
    vae = TinyVAE(TinyVAEConfig(enc=(8, 8, 16), dec=(16, 8, 8, 8), mem_blocks=1))
    clip = World().clip(1, 5)
    video = to_video(clip.frames[None])[:, :, :, :32, :32]
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (vae.decoder(vae.encoder(video))[0] - video).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_reconstruction_weight_adds_the_sprite_and_the_border_band():
    from streamer.world.train import reconstruction_weight

    bg = torch.zeros(2, 3, 5, 32, 32)
    video = bg.clone()
    video[1, 0, 2, 16, 16] = 1.0  # one sprite pixel, in the interior
    plain = reconstruction_weight(video, bg, sprite_weight=10.0)
    assert plain.shape == (2, 1, 5, 32, 32) and plain.sum() == plain.numel() + 10.0
    w = reconstruction_weight(video, bg, sprite_weight=10.0, border_weight=3.0, border=8)
    assert w[1, 0, 2, 16, 16] == 11.0 and w[0, 0, 0, 8, 8] == 1.0  # first interior pixel
    band = w[0, 0, 0] == 4.0
    assert band[:8].all() and band[-8:].all() and band[:, :8].all() and band[:, -8:].all()
    assert int(band.sum()) == 32 * 32 - 16 * 16


def test_reconstruction_weight_adds_a_halo_around_each_sprite():
    from streamer.world.train import reconstruction_weight

    bg = torch.zeros(1, 3, 2, 32, 32)
    video = bg.clone()
    video[0, :, 1, 10:14, 10:14] = 1.0  # a 4x4 sprite in frame 1 only
    w = reconstruction_weight(video, bg, sprite_weight=10.0, halo_weight=5.0, halo=3)
    assert (w[0, 0, 1, 10:14, 10:14] == 11.0).all()  # the sprite: not the halo as well
    ring = w[0, 0, 1] == 6.0
    assert ring[7:17, 7:17].sum() == 10 * 10 - 4 * 4 and ring.sum() == 10 * 10 - 4 * 4  # 3 px around it, square
    assert (w[0, 0, 0] == 1.0).all()  # frame 0 has no sprite: no halo from frame 1


def test_group_flicker_counts_frames_of_a_latent_frame_that_disagree_where_the_truth_stands_still():
    from streamer.world.train import group_flicker

    video = torch.zeros(1, 3, 9, 8, 8)  # frame 0, then two groups of 4
    video[0, :, 5:, 0, 0] = torch.tensor([0.0, 0.5, 1.0, 0.5])  # one pixel moves in the second group
    weight = torch.ones(1, 1, 9, 8, 8)
    assert group_flicker(video.clone(), video, weight) == 0.0  # drawn as true: nothing to flicker
    rec = video.clone()
    rec[0, :, 5:, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # wrong, but where the truth moves: not counted
    rec[0, :, 1:5] += 0.3  # off by the same everywhere in a group: a steady error, not a flicker
    assert group_flicker(rec, video, weight) == 0.0
    rec[0, :, 1:5, 3, 3] += torch.tensor([0.2, -0.2, 0.2, -0.2])  # one still pixel flickers
    still = 2 * 8 * 8 - 1  # pixels of the two groups whose truth stands still
    assert torch.isclose(group_flicker(rec, video, weight), torch.tensor(0.2 * 4 / (4 * still)))
    weight[0, 0, :, 3, 3] = 5.0  # a weight on that pixel (the border band's) counts it 5 times, in both groups
    assert torch.isclose(group_flicker(rec, video, weight), torch.tensor(5 * 0.2 * 4 / (4 * (still + 2 * 4))))
    assert group_flicker(rec[:, :, :1], video[:, :, :1], weight[:, :, :1]) == 0.0  # no group: no term


def test_temporal_difference_error_asks_for_the_truths_change_from_frame_to_frame():
    from streamer.world.train import temporal_difference_error

    video = torch.zeros(1, 3, 5, 4, 4)
    video[0, :, :, 0, 0] = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8])  # one pixel brightens steadily
    weight = torch.ones(1, 1, 5, 4, 4)
    assert temporal_difference_error(video + 0.3, video, weight) < 1e-7  # a steady offset changes nothing
    jumpy = video.clone()
    jumpy[0, :, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.8])  # held, then all of it at once: a jump
    # differences 0.2 short on three pairs and 0.6 over on the last, over 4 pairs x 16 pixels
    assert torch.isclose(temporal_difference_error(jumpy, video, weight), torch.tensor((3 * 0.2 + 0.6) / 64))
    flicker = video.clone()
    flicker[0, :, 1::2, 2, 2] = 0.1  # a still pixel that flickers: 0.1 on every pair
    assert torch.isclose(temporal_difference_error(flicker, video, weight), torch.tensor(4 * 0.1 / 64))
    assert temporal_difference_error(video[:, :, :1], video[:, :, :1], weight[:, :, :1]) == 0.0


def test_a_negative_border_weight_is_one_clear_error(tmp_path, capsys):
    from streamer.cli import main

    recipe = tmp_path / "dec.toml"
    recipe.write_text('[world]\npreset = "world-128"\n[vae]\ninit = "streamer/weights"\npreset = "world-128"\n'
                      "freeze_encoder = true\nsteps = 2\nbatch = 1\nframes = 5\ncrop = 64\nlr = 1e-3\n"
                      "latent_noise = 0.0\nlatent_l2 = 0.0\nsprite_weight = 1.0\nborder_weight = -1\nstats_clips = 1\n")
    assert main(["train", "--recipe", str(recipe), "--stage", "vae", "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--quiet", "--threads", "1"]) == 2
    assert "border_weight must be a number >= 0" in capsys.readouterr().err


def test_decoder_only_phase_from_init_keeps_the_latent_space(tmp_path):
    """[vae] init + freeze_encoder: the shipped autoencoder's decoder trains, while its encoder and
    latent statistics (what the DiT was trained on) stay bit for bit."""
    from safetensors.torch import load_file

    from streamer.cli import main

    recipe = tmp_path / "dec.toml"
    recipe.write_text('[world]\npreset = "world-128"\n[vae]\ninit = "streamer/weights"\npreset = "world-128"\n'
                      "freeze_encoder = true\nsteps = 2\nbatch = 1\nframes = 5\ncrop = 64\nlr = 1e-3\n"
                      "latent_noise = 0.0\nlatent_l2 = 0.0\nsprite_weight = 1.0\nborder_weight = 2.0\nstats_clips = 1\n")
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--stage", "vae", "--device", "cpu", "--out", str(out),
                 "--quiet", "--threads", "1"]) == 0
    before = load_file("streamer/weights/vae.safetensors")
    after = load_file(str(out / "vae.safetensors"))
    assert before.keys() == after.keys()
    kept = [k for k in before if not k.startswith("decoder.")]
    assert kept and all(torch.equal(before[k].float(), after[k].float()) for k in kept)
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before if k.startswith("decoder."))


def _vae_run(tmp_path, name: str, extra: str, init: bool = True) -> int:
    from streamer.cli import main

    recipe = tmp_path / f"{name}.toml"
    recipe.write_text('[world]\npreset = "world-128"\n[vae]\n' + ('init = "streamer/weights"\n' if init else "")
                      + 'preset = "world-128"\nbatch = 1\nframes = 5\ncrop = 64\nlr = 3e-3\n'
                      "latent_noise = 0.0\nlatent_l2 = 0.0\nsprite_weight = 1.0\nstats_clips = 1\n" + extra)
    return main(["train", "--recipe", str(recipe), "--stage", "vae", "--device", "cpu", "--out", str(tmp_path / name),
                 "--quiet", "--threads", "1"])


def test_anchor_weight_keeps_the_latents_near_the_inits(tmp_path):
    """anchor_weight pulls the trained encoder's latents toward the init's (the space the shipped
    DiT knows): with the same seed and steps, a large anchor moves a clip's latents less than no
    anchor, and both runs do change the encoder."""
    from streamer.models.tiny_vae import TinyVAE

    assert _vae_run(tmp_path, "free", "steps = 20\n") == 0
    assert _vae_run(tmp_path, "anchored", "steps = 20\nanchor_weight = 1000.0\n") == 0
    video = to_video(World().clip(7, 9).frames[None])
    with torch.no_grad():
        z0 = TinyVAE.from_file("streamer/weights/vae.safetensors").encoder(video)
        drift = {name: float((TinyVAE.from_file(tmp_path / name / "vae.safetensors").encoder(video) - z0).abs().mean())
                 for name in ("free", "anchored")}
    assert 0.0 < drift["anchored"] < 0.5 * drift["free"], drift


def test_anchor_weight_without_init_is_one_clear_error(tmp_path, capsys):
    assert _vae_run(tmp_path, "noinit", "anchor_weight = 1.0\n", init=False) == 2
    assert "anchor_weight needs [vae] init" in capsys.readouterr().err


def test_recipe_and_track_channels_fit_the_model():
    recipe = load_recipe(DEFAULT_RECIPE)
    cfg = get_config(recipe["dit"]["preset"])
    assert cfg.track_channels == recipe["dit"]["track_dim"]
    clip = World().clip(2, 1 + 4 * 5)
    ch = TrajectoryEncoder(cfg.track_channels)(clip.trajectory, list(range(6)), (16, 16))
    assert ch.shape == (1, cfg.track_channels, 6, 16, 16)
    # a visible track puts its ID code on the latent grid at its position (bilinear: sub-cell precise)
    one = Trajectory(np.array([[[50.0, 70.0]]], np.float32), np.ones((1, 1), bool))
    x, y = 50.0, 70.0
    ch = TrajectoryEncoder(cfg.track_channels)(one, [0], (16, 16))
    cell = ch[0, :, 0].abs().sum(0)
    iy, ix = np.unravel_index(int(cell.argmax()), cell.shape)
    assert abs(ix * 8 + 4 - x) <= 4 and abs(iy * 8 + 4 - y) <= 4


# ---- issue 17: image-start blocks, rollouts, text-only clips -------------------------------------
def test_uneven_blocks_match_uniform_chunks_and_stay_causal():
    from streamer.models.wan import block_index

    assert block_index(9, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert block_index(7, (1, 3, 3)).tolist() == [0, 1, 1, 1, 2, 2, 2]
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = CausalWanModel(cfg).eval()
    x, ctx = torch.randn(1, 16, 6, 4, 4), torch.randn(1, 16, 6, 4, 4)
    t = torch.full((1, 6), 500.0)
    text = torch.randn(1, cfg.text_len, cfg.text_dim)
    with torch.no_grad():
        # the default path: an int and the same blocks listed give the same outputs
        assert torch.equal(model(x, t, text, chunk_frames=3, clean_x=ctx), model(x, t, text, chunk_frames=(3, 3), clean_x=ctx))
        # an image start (1, 3, 2): frame 0's block sees nothing later
        a = model(x, t, text, chunk_frames=(1, 3, 2), clean_x=ctx)
        x2, ctx2 = x.clone(), ctx.clone()
        x2[:, :, 1:] += 1.0
        ctx2[:, :, 1:] += 1.0
        b = model(x2, t, text, chunk_frames=(1, 3, 2), clean_x=ctx2)
    assert torch.allclose(a[:, :, :1], b[:, :, :1], atol=1e-5)
    assert not torch.allclose(a[:, :, 1:4], b[:, :, 1:4], atol=1e-3)


def test_rollout_context_replaces_only_the_rolled_out_chunks():
    from streamer.world.train import rollout_context

    torch.manual_seed(0)
    cfg = get_config("tiny", track_channels=8)
    model = CausalWanModel(cfg).eval()
    x0 = torch.randn(2, 16, 10, 4, 4)
    text = torch.randn(2, cfg.text_len, cfg.text_dim)
    tracks = torch.randn(2, 8, 10, 4, 4)
    ctx = rollout_context(model, x0, text, tracks, (1, 3, 3, 3), 2, {})
    assert ctx.shape == x0.shape
    assert torch.equal(ctx[:, :, :1], x0[:, :, :1])      # the image start is the truth
    assert torch.equal(ctx[:, :, 7:], x0[:, :, 7:])      # chunks past the rollout keep the truth
    assert (ctx[:, :, 1:7] - x0[:, :, 1:7]).abs().mean() > 0.1  # the model's own samples
    # without a start image the first chunk is the model's own too (sampled from noise, no history)
    noise = rollout_context(model, x0[:, :, :9], text, tracks[:, :, :9], 3, 2, {}, from_noise=True)
    assert torch.equal(noise[:, :, 6:], x0[:, :, 6:9])
    assert all((noise[:, :, f] - x0[:, :, f]).abs().mean() > 0.1 for f in range(6))
    # a loss with the rollout as history runs and skips the given first frame
    loss = flow_loss(model, x0, text, tracks, np.random.default_rng(0), {"timestep_shift": 5.0}, (1, 3, 3, 3),
                     context=ctx, skip_first=True)
    assert torch.isfinite(loss)


def test_text_only_clips_have_no_tracks_and_keep_their_prompt():
    from streamer.world.train import dit_batch

    class Text:
        def encode(self, prompts):
            self.prompts = prompts
            return torch.zeros(len(prompts), 4, 8)

    class Vae:
        def encode(self, video):
            return video[:, :, ::4, ::8, ::8]

    r = {"batch": 3, "paraphrase": False, "text_dropout": 1.0, "track_dropout": 0.0, "text_only": 1.0}
    text_enc = Text()
    _, _, tracks, _ = dit_batch(World(), np.random.default_rng(0), r, Vae(), text_enc, TrajectoryEncoder(8), 13, 4, 3,
                             torch.device("cpu"), blocks=(1, 3))
    assert tracks.abs().sum() == 0
    assert all(p.strip() for p in text_enc.prompts)  # text dropout never empties a text-only clip
    r["text_only"] = 0.0
    _, _, tracks, _ = dit_batch(World(), np.random.default_rng(0), r, Vae(), text_enc, TrajectoryEncoder(8), 13, 4, 3,
                             torch.device("cpu"), blocks=(1, 3))
    assert tracks.abs().sum() > 0


def test_keep_first_tracks_spares_the_first_chunk_of_random_layout_clips_only():
    """keep_first_tracks: track dropout never empties the first chunk of a clip streamed from noise
    (no tracks there means the spawn layout), but still drops later chunks, an image start's
    chunks, and text-only clips' tracks; without the key the first chunk drops like the rest."""
    from streamer.world.train import dit_batch

    class Vae:
        def encode(self, video):
            return video[:, :, ::4, ::8, ::8]

    def per_frame(r, blocks=None):  # track channel mass per latent frame [B, F]
        _, _, tracks, _ = dit_batch(World(), np.random.default_rng(3), r, Vae(), _ZeroText(), TrajectoryEncoder(8), 13, 4,
                                    2, torch.device("cpu"), blocks=blocks)
        return tracks.abs().sum((1, 3, 4))

    r = {"batch": 4, "paraphrase": False, "text_dropout": 0.0, "track_dropout": 1.0, "text_only": 0.0}
    assert per_frame(r).sum() == 0  # every chunk dropped
    kept = per_frame({**r, "keep_first_tracks": True})
    assert (kept[:, :2] > 0).all() and kept[:, 2:].sum() == 0  # the first chunk (2 frames) only
    assert per_frame({**r, "keep_first_tracks": True}, blocks=(1, 3)).sum() == 0  # an image start: dropped
    assert per_frame({**r, "keep_first_tracks": True, "text_only": 1.0}).sum() == 0  # a prompt alone: none


def test_spawn_text_makes_text_only_clips_the_worlds_text_only_layout():
    """With spawn_text, text-only clips are World.clip(spawn=True) (the sprites at the spawn points);
    without it, or for clips that keep their tracks, the clip of the same seed as before."""
    from streamer.world.train import dit_batch

    w = World()
    first = lambda r: dit_batch(w, np.random.default_rng(1), r, _IdentityVae(), _ZeroText(), TrajectoryEncoder(8), 5, 2, 1,  # noqa: E731
                                torch.device("cpu"))[0][:, :, 0]
    seed = int(np.random.default_rng(1).integers(1 << 30))
    r = {"batch": 1, "paraphrase": False, "text_dropout": 0.0, "track_dropout": 0.0, "text_only": 1.0}
    want = lambda clip: torch.from_numpy(clip.frames[0]).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    assert torch.equal(first({**r, "spawn_text": True})[0], want(w.clip(seed, 5, spawn=True)))
    assert torch.equal(first(r)[0], want(w.clip(seed, 5)))
    assert torch.equal(first({**r, "spawn_text": True, "text_only": 0.0})[0], want(w.clip(seed, 5)))


def test_text_only_offset_starts_text_only_clips_later_in_their_motion():
    """text_offset (the `text_only_offset` key, on image layouts): each text-only clip is the
    text-only layout's clip from a frame drawn in [0, text_offset), past the spawn point's first
    bounce; clips with tracks still start at frame 0."""
    from streamer.world.train import dit_batch

    w = World()
    r = {"batch": 3, "paraphrase": False, "text_dropout": 0.0, "track_dropout": 0.0, "text_only": 1.0,
         "spawn_text": True}
    got = dit_batch(w, np.random.default_rng(2), r, _IdentityVae(), _ZeroText(), TrajectoryEncoder(8), 5, 2, 1, torch.device("cpu"),
                    with_clips=True, text_offset=300)[4]
    rng = np.random.default_rng(2)
    seeds = [int(rng.integers(1 << 30)) for _ in range(3)]
    rng.random(3)
    offsets = rng.integers(0, 300, 3)
    assert offsets.max() > 0
    for clip, seed, o in zip(got, seeds, offsets):
        want = w.clip(seed, 5 + int(o), spawn=True)
        assert np.array_equal(clip.frames, want.frames[o:]) and np.allclose(clip.trajectory.tracks, want.trajectory.tracks[o:])
    tracked = dit_batch(w, np.random.default_rng(2), {**r, "text_only": 0.0}, _IdentityVae(), _ZeroText(), TrajectoryEncoder(8), 5, 2,
                        1, torch.device("cpu"), with_clips=True, text_offset=300)[4]
    assert all(np.array_equal(c.frames, w.clip(s, 5).frames) for c, s in zip(tracked, seeds))


def test_cosine_schedule_ends_at_the_time_cap_when_time_runs_ahead():
    from streamer.world.train import cosine_lr

    assert cosine_lr(100, 1000, 1.0, warmup=0) > 0.9  # by steps: early in the schedule
    assert cosine_lr(100, 1000, 1.0, warmup=0, time_frac=0.5) == pytest.approx(0.5)  # by time: half way
    assert cosine_lr(100, 1000, 1.0, warmup=0, time_frac=1.2) == pytest.approx(0.0)  # past the cap: done


def test_gpu_recipe_runs_every_stage_in_a_smoke_run(tmp_path):
    """recipes/gpu.toml (the one-call GPU training of scripts/gpu_check.sh train) parses, and its
    autoencoder, DiT and fine-tune stages connect: cut to 2 steps each, on the CPU, the run ends with
    world-model weights the pipeline loads and streams from."""
    import torch

    from streamer.cli import main
    from streamer.pipeline import Pipeline
    from streamer.session import Session

    out = tmp_path / "run"
    assert main(["train", "--recipe", "recipes/gpu.toml", "--smoke", "2", "--device", "cpu", "--out", str(out),
                 "--quiet", "--threads", "1"]) == 0
    weights = out / "finetune"
    assert (weights / "dit.safetensors").is_file() and (weights / "vae.safetensors").is_file()
    pipe = Pipeline.load_default(weights, device="cpu", dtype=torch.float32)
    chunk = Session(pipe, "a red circle on a grass background", pipe.stream_config()).step()
    assert chunk.frames.shape[1:] == (128, 128, 3)


def test_sprite_cells_cover_each_latent_frames_sprites_and_weight_the_loss():
    """sprite_cells marks the latent cells under a sprite in any video frame of a latent frame (frame
    0 alone, then 4 each), nothing far from it; flow_loss weights exactly those cells."""
    from streamer.models.wan import CausalWanModel, get_config
    from streamer.world.train import flow_loss, sprite_cells

    clip = World().clip(3, 9, spawn=True)  # spawn layout: the sprites' places are known
    cells = sprite_cells([clip], 3, (16, 16))[0, 0]
    assert cells.shape == (3, 16, 16)
    for f, frames in ((0, [0]), (1, [1, 2, 3, 4]), (2, [5, 6, 7, 8])):
        for t in frames:
            for x, y in clip.trajectory.tracks[t]:
                assert cells[f, int(y // 8), int(x // 8)] == 1  # the cell under each sprite centre
        far = [(i, j) for i in range(16) for j in range(16)
               if min(np.hypot(8 * j + 4 - x, 8 * i + 4 - y) for t in frames for x, y in clip.trajectory.tracks[t]) > 20]
        assert far and all(cells[f, i, j] == 0 for i, j in far)
    assert 0.01 < cells.float().mean() < 0.15
    cfg = get_config("tiny", track_channels=8)
    model = CausalWanModel(cfg).eval()
    x0, text = torch.randn(1, 16, 3, 4, 4), torch.randn(1, cfg.text_len, cfg.text_dim)
    tracks, mask = torch.zeros(1, 8, 3, 4, 4), torch.zeros(1, 1, 3, 4, 4)
    mask[..., 0, 0] = 1
    loss = lambda w: flow_loss(model, x0, text, tracks, np.random.default_rng(0),  # noqa: E731
                               {"timestep_shift": 5.0, "sprite_weight": w}, 3, sprites=mask)
    with torch.no_grad():
        plain, weighted = loss(0.0), loss(4.0)
    assert weighted > plain * 1.05  # 3 of 48 cells weighted 5x: the loss grows by about a quarter


def test_fine_tune_phases_run_in_order_and_resume_at_the_next_phase(tmp_path, monkeypatch):
    """[[finetune.phases]]: each phase overrides the section's keys and trains on the previous phase's
    weights in the same folder; a resumed run whose phase 0 ended starts phase 1 (not phase 0 again)."""
    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    recipe = {**base, "finetune": {**ft, "init": str(WEIGHTS_DIR), "phases": [{}, {"text_only": 1.0, "spawn_text": True}]}}
    monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
    args = ["train", "--smoke", "1", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1"]
    out = tmp_path / "ft"
    assert main(args + ["--out", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert log.index("finetune phase 0") < log.index("finetune phase 0: stopped") < log.index("finetune phase 1: text_only = 1.0")
    assert "finetune phase 1: stopped" in log
    # resume after phase 0 ended: phase 1 only
    state = torch.load(out / "dit_last.pt", weights_only=True)
    torch.save({**state, "phase": 0, "done": True}, out / "dit_last.pt")
    (out / "train.log").write_text("")
    assert main(args + ["--out", str(out), "--resume"]) == 0
    log = (out / "train.log").read_text()
    assert "finetune phase 0" not in log and "finetune phase 1" in log and "dit resumed" not in log


def test_a_missing_init_folder_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """The DiT's `init` (the default recipe warm-starts from the previous model, fetched from git)
    and a fine-tune alone without an `init`: one clear line each, exit 2, before any DiT step."""
    import streamer.world.train as train
    from streamer.cli import main

    base = load_recipe(DEFAULT_RECIPE)
    cases = [({**base, "dit": {**base["dit"], "init": str(tmp_path / "none")}}, "all", "init: no "),
             ({**base, "finetune": {k: v for k, v in base["finetune"].items() if k != "init"}}, "finetune",
              "needs init"),
             ({**base, "decoder": {**base["decoder"], "init": str(tmp_path / "none")}}, "decoder", "init: no "),
             ({**base, "decoder": {k: v for k, v in base["decoder"].items() if k != "init"}}, "decoder",
              "needs a [decoder] section with init")]
    for recipe, stage, words in cases:
        monkeypatch.setattr(train, "load_recipe", lambda path, recipe=recipe: recipe)
        code = main(["train", "--smoke", "1", "--stage", stage, "--device", "cpu", "--out", str(tmp_path / stage),
                     "--quiet", "--threads", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err


def test_default_recipe_runs_every_stage_in_a_smoke_run(tmp_path, monkeypatch):
    """recipes/default.toml (the shipped model's recipe) connects: autoencoder phases, the DiT
    warm-started from its `init` (here the shipped weights, which have the same architecture), the
    fine-tune, the re-fit (the autoencoder round, then the DiT) and the decoder alone, 1 step each,
    end with weights the pipeline loads and streams from."""
    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR, Pipeline
    from streamer.session import Session

    base = load_recipe(DEFAULT_RECIPE)
    assert base["dit"].get("init"), "the default recipe warm-starts its DiT"
    recipe = {**base, "dit": {**base["dit"], "init": str(WEIGHTS_DIR)}}
    monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
    out = tmp_path / "run"
    assert main(["train", "--smoke", "1", "--device", "cpu", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    log = (out / "train.log").read_text()
    assert "dit initialised from" in log and "refit: the DiT from" in log and "decoder: " in log
    from safetensors.torch import load_file

    refit, decoder = out / "finetune" / "refit", out / "finetune" / "refit" / "decoder"
    # the decoder stage keeps the re-fit's DiT and encoder (its latent space) and trains the decoder alone
    dits = [load_file(str(d / "dit.safetensors")) for d in (refit, decoder)]
    assert dits[0].keys() == dits[1].keys() and all(torch.equal(dits[0][k], dits[1][k]) for k in dits[0])
    from safetensors import safe_open

    labels = [safe_open(str(d / "dit.safetensors"), "pt").metadata()["step"] for d in (refit, decoder)]
    assert labels[1].startswith(labels[0].split(":")[0] + " with its decoder retrained ([decoder] stage)")
    before, after = (load_file(str(d / "vae.safetensors")) for d in (refit, decoder))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("decoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    pipe = Pipeline.load_default(decoder, device="cpu", dtype=torch.float32)
    chunk = Session(pipe, "a red circle on a grass background", pipe.stream_config()).step()
    assert chunk.frames.shape[1:] == (128, 128, 3)


def test_guidance_distillation_targets_the_guided_teacher():
    """With a teacher, flow_loss regresses the student onto the teacher's text-guided flow
    v(null) + g (v(text) - v(null)) at the same noisy input and history, for the clips without
    tracks only (clip 0 here; clip 1 has tracks and keeps the data's target): a student that is
    its own teacher has zero loss on clip 0 at g = 1; at g = 3 the loss is the distance to the
    hand-made targets; without a teacher it is the data's loss. guidance_target = "data" (model
    guidance): the data's flow plus (g - 1) x the teacher's guidance direction on clip 0."""
    from streamer.models.wan import CausalWanModel, get_config

    torch.manual_seed(0)
    cfg = get_config("tiny", track_channels=8)
    model = CausalWanModel(cfg).eval()
    x0 = torch.randn(2, 16, 6, 4, 4)
    text, null = torch.randn(2, cfg.text_len, cfg.text_dim), torch.randn(1, cfg.text_len, cfg.text_dim)
    tracks = torch.randn(2, 8, 6, 4, 4)
    tracks[0] = 0  # a prompt alone

    def loss(g, teacher=model, target="teacher"):
        torch.manual_seed(1)
        r = {"timestep_shift": 5.0, "guidance_scale": g, "guidance_target": target}
        return flow_loss(model, x0, text, tracks, np.random.default_rng(0), r, 3, teacher=teacher, null_text=null)

    with torch.no_grad():
        sigma, eps, s, xt = _flow_draws(x0)  # the draws flow_loss makes, for the hand-made targets
        run = lambda t: model(xt, sigma * 1000, t, chunk_frames=3, clean_x=x0, tracks=tracks,  # noqa: E731
                              clean_tracks=tracks)
        v_text, v_null = run(text), run(null.expand_as(text))
        data = (v_text - (eps - x0)) ** 2
        guided = (v_text - (v_null + 3.0 * (v_text - v_null))) ** 2
        assert torch.allclose(loss(1.0), data[1].mean() / 2, rtol=1e-4)  # clip 0: its own teacher, no loss
        assert torch.allclose(loss(3.0), (guided[0].mean() + data[1].mean()) / 2, rtol=1e-4)
        assert torch.allclose(loss(3.0, teacher=None), data.mean(), rtol=1e-4)
        # guidance_target = "data" (model guidance): the data's flow plus 2 x the guidance direction
        on_data = (v_text - ((eps - x0) + 2.0 * (v_text - v_null))) ** 2
        assert torch.allclose(loss(3.0, target="data"), (on_data[0].mean() + data[1].mean()) / 2, rtol=1e-4)
        assert torch.allclose(loss(1.0, target="data"), data.mean(), rtol=1e-4)  # g = 1: the data alone
        assert not torch.allclose(loss(3.0, target="data"), loss(3.0))


def _flow_draws(x0: torch.Tensor, chunk: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The draws flow_loss makes for x0 with rng seed 0 and torch seed 1 (rng: sigma per block;
    torch: eps), for hand-made targets: (sigma [B, F], eps, sigma broadcast to x0, x_t)."""
    from streamer.world.train import sigma_per_block

    b, _, n = x0.shape[:3]
    sigma = sigma_per_block(np.random.default_rng(0), b, chunk, n, 5.0)
    torch.manual_seed(1)
    eps = torch.randn_like(x0)
    s = sigma[:, None, :, None, None]
    return sigma, eps, s, (1 - s) * x0 + s * eps


def test_history_background_weighs_only_the_background_after_the_first_block():
    """history_background = w: in blocks after the first, non-sprite cells count w times, sprite
    cells and the whole first block as before (the loss of a rollout from noise: its background is
    the model's invention, the true clip's background no continuation of it)."""
    from streamer.models.wan import CausalWanModel, get_config

    torch.manual_seed(0)
    cfg = get_config("tiny", track_channels=8)
    model = CausalWanModel(cfg).eval()
    x0 = torch.randn(2, 16, 6, 4, 4)
    text, tracks = torch.randn(2, cfg.text_len, cfg.text_dim), torch.randn(2, 8, 6, 4, 4)
    sprites = torch.zeros(2, 1, 6, 4, 4)
    sprites[:, :, :, 1:3, 1:3] = 1.0
    r = {"timestep_shift": 5.0, "sprite_weight": 4.0}

    def loss(w):
        torch.manual_seed(1)
        return flow_loss(model, x0, text, tracks, np.random.default_rng(0), r, 3, sprites=sprites,
                         history_background=w)

    with torch.no_grad():
        sigma, eps, s, xt = _flow_draws(x0)
        v = model(xt, sigma * 1000, text, chunk_frames=3, clean_x=x0, tracks=tracks,
                  clean_tracks=tracks)
        err = (v - (eps - x0)) ** 2 * (1 + 4.0 * sprites)
        later = torch.zeros_like(sprites)
        later[:, :, 3:] = 1.0
        for w in (1.0, 0.0, 0.25):
            want = err * (1 - later * (1 - sprites) * (1 - w))
            assert torch.allclose(loss(w), want.mean(), rtol=1e-4)
        assert loss(0.0) < loss(1.0)
        with pytest.raises(ValueError, match="sprite cells"):
            flow_loss(model, x0, text, tracks, np.random.default_rng(0), r, 3, history_background=0.0)


def test_background_mean_adds_the_squared_mean_error_of_the_background_cells():
    """background_mean = w adds w x the squared mean (per clip, latent frame and channel, over the
    given background cells) of the predicted clean latents' error; frames with fewer than 4 such
    cells add nothing, and without cells or at w = 0 the loss is the plain one."""

    torch.manual_seed(0)
    cfg = get_config("tiny", track_channels=8)
    model = CausalWanModel(cfg).eval()
    x0 = torch.randn(2, 16, 6, 4, 4)
    text, tracks = torch.randn(2, cfg.text_len, cfg.text_dim), torch.randn(2, 8, 6, 4, 4)
    cells = torch.zeros(2, 1, 6, 4, 4, dtype=torch.bool)
    cells[:, :, 3:, :, :2] = True  # the later block's left half: 8 cells per frame
    cells[1, :, 5] = False
    cells[1, :, 5, 0, :3] = True   # 3 cells: too few for a mean

    def loss(w, c=cells):
        torch.manual_seed(1)
        return flow_loss(model, x0, text, tracks, np.random.default_rng(0), {"timestep_shift": 5.0, "background_mean": w},
                         3, background_cells=c)

    with torch.no_grad():
        sigma, eps, s, xt = _flow_draws(x0)
        v = model(xt, sigma * 1000, text, chunk_frames=3, clean_x=x0, tracks=tracks, clean_tracks=tracks)
        plain = ((v - (eps - x0)) ** 2).mean()
        means = []
        for b in range(2):
            for f in range(3, 6):
                m = cells[b, 0, f]
                if m.sum() >= 4:
                    means.append(((xt - s * v) - x0)[b, :, f][:, m].mean(-1))  # [C]
        dc = (torch.stack(means) ** 2).mean()
        assert len(means) == 5 and dc > 0
        assert torch.allclose(loss(0.0), plain, rtol=1e-5)
        assert torch.allclose(loss(2.5, None), plain, rtol=1e-5)
        assert torch.allclose(loss(2.5), plain + 2.5 * dc, rtol=1e-4)
    from streamer.world.train import check_phase

    for bad, said in (({"background_mean": -1}, "finite loss weight"), ({"background_mean": True}, "finite loss weight"),
                      ({"background_mean": 1.0}, "set own_background > 0")):
        with pytest.raises(ValueError, match=said):
            check_phase(bad)
    check_phase({"background_mean": 1.0, "own_background": 1.0, "noise_rollout": 0.5})


def test_own_background_continues_the_models_own_history_away_from_the_sprites():
    """own_background: in each block after the first whose previous block is the model's own, the
    background cells of a clip with tracks take that block's last own latent frame (input and
    target alike), the ring within one cell of a sprite weighs 0, sprite cells and the first block
    keep the truth; a prompt alone keeps it all unless own_background_text."""
    from streamer.world.train import own_background

    torch.manual_seed(0)
    x0, ctx = torch.randn(2, 4, 9, 8, 8), torch.randn(2, 4, 9, 8, 8)
    sprites = torch.zeros(2, 1, 9, 8, 8)
    sprites[:, :, :, 3:5, 3:5] = 1.0  # a sprite standing still on cells 3-4
    text_only = np.array([False, True])
    out, w, replaced = own_background(x0, ctx, sprites, 3, 2, text_only, {"own_background": 0.5})
    assert torch.equal(replaced, w == 0.5)  # the replaced cells, and only they, weigh own_background
    far = torch.ones(8, 8, dtype=torch.bool)
    far[2:6, 2:6] = False  # the sprite cells and their one-cell ring
    ring = ~far
    ring[3:5, 3:5] = False
    for k, src in ((1, 2), (2, 5)):  # blocks 1 and 2 follow own blocks 0 and 1
        for f in range(3 * k, 3 * k + 3):
            assert torch.equal(out[0, :, f][:, far], ctx[0, :, src][:, far])
            assert torch.equal(out[0, :, f][:, ~far], x0[0, :, f][:, ~far])
            assert (w[0, 0, f][far] == 0.5).all() and (w[0, 0, f][ring] == 0).all()
            assert (w[0, 0, f][3:5, 3:5] == 1).all()
    assert torch.equal(out[0, :, :3], x0[0, :, :3]) and (w[0, :, :3] == 1).all()
    assert torch.equal(out[1], x0[1]) and (w[1] == 1).all()  # the prompt alone: the truth throughout
    out, w, _ = own_background(x0, ctx, sprites, 3, 1, text_only, {"own_background": 1.0, "own_background_text": True})
    assert torch.equal(out[1, :, 3][:, far], ctx[1, :, 2][:, far])
    assert torch.equal(out[:, :, 6:], x0[:, :, 6:])  # block 2 follows block 1, the truth: no change
    # own_sprites: where the own history's last frame shows a sprite away from the true one, the
    # block keeps the truth within one cell of it (not copied in as background)
    mine = torch.zeros(2, 1, 9, 8, 8, dtype=torch.bool)
    mine[:, :, 2, 0, 7] = True  # the model's own sprite in block 0's last frame, top right
    out, w, _ = own_background(x0, ctx, sprites, 3, 2, text_only, {"own_background": 0.5}, own_sprites=mine)
    kept = torch.zeros(8, 8, dtype=torch.bool)
    kept[0:2, 6:8] = True  # the cell and its one-cell ring (inside the frame)
    for f in range(3, 6):
        assert torch.equal(out[0, :, f][:, kept], x0[0, :, f][:, kept]) and (w[0, 0, f][kept] == 1).all()
        assert torch.equal(out[0, :, f][:, far & ~kept], ctx[0, :, 2][:, far & ~kept])
    for f in range(6, 9):  # block 2 follows own block 1, whose last frame shows no own sprite: as before
        assert torch.equal(out[0, :, f][:, far], ctx[0, :, 5][:, far])


def test_own_background_from_the_sink_continues_the_first_blocks_last_frame():
    """own_background_from = "sink": every replaced block takes the first block's last own latent
    frame (not its previous block's), the ring taken around that frame's sprite; block 1 is the same
    either way, and a bad value or the key without own_background is one ValueError naming it."""
    from streamer.world.train import check_phase, own_background

    torch.manual_seed(1)
    x0, ctx = torch.randn(1, 4, 9, 8, 8), torch.randn(1, 4, 9, 8, 8)
    sprites = torch.zeros(1, 1, 9, 8, 8)
    sprites[:, :, :3, 0:2, 0:2] = 1.0  # the sprite top left in block 0 (the sink) ...
    sprites[:, :, 3:, 5:7, 5:7] = 1.0  # ... then bottom right
    text_only = np.array([False])
    prev, w_prev, _ = own_background(x0, ctx, sprites, 3, 2, text_only, {"own_background": 1.0})
    sink, w_sink, rep = own_background(x0, ctx, sprites, 3, 2, text_only,
                                       {"own_background": 1.0, "own_background_from": "sink"})
    assert torch.equal(sink[:, :, :6], prev[:, :, :6]) and torch.equal(w_sink[:, :, :6], w_prev[:, :, :6])
    far = torch.ones(8, 8, dtype=torch.bool)
    far[0:3, 0:3] = False  # the sink frame's sprite and its ring
    far[4:8, 4:8] = False  # the block's own sprite and its ring
    for f in range(6, 9):
        assert torch.equal(sink[0, :, f][:, far], ctx[0, :, 2][:, far])  # the sink's last frame ...
        assert not torch.equal(sink[0, :, f][:, far], prev[0, :, f][:, far])  # ... not block 1's
        assert torch.equal(sink[0, :, f][:, ~far], x0[0, :, f][:, ~far]) and torch.equal(rep[0, 0, f], far)
    # the model's own sprite in the sink frame keeps the truth round it; one in block 1's last frame
    # (the previous block, not the source) no longer does
    mine = torch.zeros(1, 1, 9, 8, 8, dtype=torch.bool)
    mine[:, :, 2, 0, 7] = True
    mine[:, :, 5, 7, 0] = True
    own, _, _ = own_background(x0, ctx, sprites, 3, 2, text_only,
                               {"own_background": 1.0, "own_background_from": "sink"}, own_sprites=mine)
    for f in range(6, 9):
        assert torch.equal(own[0, :, f, 0:2, 6:8], x0[0, :, f, 0:2, 6:8])
        assert torch.equal(own[0, :, f, 6:8, 0:2], ctx[0, :, 2, 6:8, 0:2])
    for bad in ({"own_background": 1.0, "own_background_from": "last"}, {"own_background_from": "sink"}):
        with pytest.raises(ValueError, match="own_background_from must be"):
            check_phase({"noise_rollout": 0.5, **bad})
    check_phase({"noise_rollout": 0.5, "own_background": 1.0, "own_background_from": "sink"})
    check_phase({"own_background": 0.0, "own_background_from": "previous"})  # a phase that turns it off


def test_history_bias_offsets_the_history_after_the_sink_per_clip_and_channel():
    """history_bias adds one N(0, scale^2) offset per clip and channel to every latent frame from
    the first block's end on (the sink untouched, the input unchanged), and needs the sink as the
    background's source: a bad value is one ValueError naming the key."""
    from streamer.world.train import check_phase, history_bias

    ctx = torch.randn(3, 4, 9, 5, 5)
    out = history_bias(ctx, 3, 0.05, np.random.default_rng(0))
    assert torch.equal(out[:, :, :3], ctx[:, :, :3]) and not torch.equal(out, ctx)
    d = out[:, :, 3:] - ctx[:, :, 3:]  # [B, C, 6, h, w]: the same offset in every frame and cell
    assert torch.allclose(d, d[:, :, :1, :1, :1].expand_as(d), atol=1e-6)
    want = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)) * 0.05
    assert torch.allclose(d[:, :, 0, 0, 0], want, atol=1e-6)
    ok = {"noise_rollout": 0.5, "own_background": 1.0, "own_background_from": "sink"}
    check_phase({**ok, "history_bias": 0.05})
    for bad in ({**ok, "history_bias": -0.1}, {**ok, "history_bias": True},
                {"noise_rollout": 0.5, "own_background": 1.0, "history_bias": 0.05}):
        with pytest.raises(ValueError, match="history_bias must be"):
            check_phase(bad)


def test_own_sprite_cells_marks_the_cells_showing_a_named_colour():
    """own_sprite_cells decodes each latent frame and marks the cells with a pixel of a colour its
    clip's prompt names, not those of other colours."""
    from types import SimpleNamespace

    from streamer.world.scenes import Sprite
    from streamer.world.train import own_sprite_cells

    class PaintVae:  # "decodes" latent channel 0 > 0 as a red pixel block, channel 1 > 0 as blue, else grey
        def decode(self, z):
            b, _, t, h, w = z.shape
            img = torch.full((b, 3, t, h * 8, w * 8), 0.0)
            red, blue = z[:, 0] > 0, z[:, 1] > 0
            up = lambda m: m.repeat_interleave(8, -1).repeat_interleave(8, -2)  # noqa: E731
            img[:, 0] = torch.where(up(red), 1.0, img[:, 0])
            img[:, 1] = torch.where(up(red), -1.0, img[:, 1])
            img[:, 2] = torch.where(up(red), -1.0, torch.where(up(blue), 1.0, img[:, 2]))
            return img

    ctx = torch.full((1, 4, 3, 4, 4), -1.0)
    ctx[0, 0, 1, 2, 3] = 1.0  # a red cell in latent frame 1
    ctx[0, 1, 2, 0, 0] = 1.0  # a blue cell in latent frame 2
    clip = SimpleNamespace(scene=SimpleNamespace(sprites=[Sprite("circle", "red", 9.0)]))
    cells = own_sprite_cells(PaintVae(), ctx, [clip])
    assert cells.shape == (1, 1, 3, 4, 4) and cells.dtype == torch.bool
    assert cells[0, 0, 1, 2, 3] and cells.sum() == 1  # the red one only: blue is no colour the prompt names
    assert torch.equal(own_sprite_cells(PaintVae(), ctx, [clip], frames=[1]), cells)  # only the frames asked for
    assert not own_sprite_cells(PaintVae(), ctx, [clip], frames=[0, 2]).any()


def test_a_bad_value_in_a_later_phase_is_one_line_before_any_stage_trains(tmp_path, monkeypatch, capsys):
    """A wrong value in the default recipe's last re-fit phase stops `--stage all` with one line and
    exit 2 before the autoencoder (its first stage) writes anything."""
    import copy

    import streamer.world.train as train
    from streamer.cli import main

    recipe = copy.deepcopy(load_recipe(DEFAULT_RECIPE))
    recipe["refit"]["phases"][-1]["own_background"] = -1.0
    monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
    out = tmp_path / "x"
    assert main(["train", "--smoke", "1", "--device", "cpu", "--out", str(out), "--quiet", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "own_background must be" in err and len(err.strip().splitlines()) == 1
    assert not (out / "vae.safetensors").exists() and not (out / "train.log").exists()


def test_stream_metadata_keeps_guidance_apart_from_the_policy_knobs():
    from streamer.world.train import stream_metadata

    recipe = {"stream": {"policy": "deep-sink", "window": 9, "sink": 3, "guidance": 2.0, "guidance_interval": [0, 900]}}
    assert stream_metadata(recipe) == {"policy": "deep-sink", "guidance": 2.0, "guidance_interval": [0, 900],
                                       "policy_args": {"window": 9, "sink": 3}}
    assert stream_metadata({}) == {"policy": "window", "policy_args": {}}
    assert stream_metadata({"stream": {"policy": "deep-sink", "sink": 3, "steps": 8}}) == {
        "policy": "deep-sink", "steps": 8, "policy_args": {"sink": 3}}
    with pytest.raises(ValueError, match="sampler steps"):
        stream_metadata({"stream": {"steps": 0}})
    assert stream_metadata({"stream": {"policy": "deep-sink", "hidden_chunks": 1}}) == {
        "policy": "deep-sink", "hidden_chunks": 1, "policy_args": {}}
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ValueError, match="hidden_chunks"):
            stream_metadata({"stream": {"hidden_chunks": bad}})
    assert stream_metadata({"stream": {"drift_anchor": True}}) == {
        "policy": "window", "drift_anchor": True, "policy_args": {}}
    for bad in ("true", 1):  # not a policy knob either: it must not fall through to policy_args
        with pytest.raises(ValueError, match="drift_anchor must be true or false"):
            stream_metadata({"stream": {"drift_anchor": bad}})


def test_shipped_weights_stream_as_their_recipe_says():
    """The shipped DiT's stream metadata is its recipe's [stream] (what `streamer train --recipe
    recipes/default.toml` would stamp), and the recipe shipped beside it is recipes/default.toml."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    from streamer.pipeline import WEIGHTS_DIR
    from streamer.world.train import stream_metadata

    with safe_open(str(WEIGHTS_DIR / "dit.safetensors"), "pt") as f:
        shipped = json.loads(f.metadata()["stream"])
    assert shipped == stream_metadata(load_recipe(WEIGHTS_DIR / "recipe.toml"))
    assert (WEIGHTS_DIR / "recipe.toml").read_text() == Path(DEFAULT_RECIPE).read_text()


def test_teacher_start_is_the_phase_start_model_kept_for_a_resume(tmp_path):
    """guidance_teacher = "start": the model as the phase starts, saved in the run folder, so a phase
    resumed later (with the student moved on) gets that same teacher back; a fresh start re-freezes."""
    from streamer.models.wan import CausalWanModel, get_config
    from streamer.world.train import load_teacher

    torch.manual_seed(0)
    model = CausalWanModel(get_config("tiny"))
    r = {"guidance_scale": 3.0}
    assert load_teacher({}, model, torch.device("cpu")) is None  # no guidance: no teacher
    first = load_teacher(r, model, torch.device("cpu"), tmp_path / "teacher.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the student trains on
    resumed = load_teacher(r, model, torch.device("cpu"), tmp_path / "teacher.safetensors", fresh=False)
    w = "blocks.0.ffn.net.2.weight"
    assert torch.equal(resumed.state_dict()[w], first.state_dict()[w])
    assert not torch.equal(resumed.state_dict()[w], model.state_dict()[w])
    assert not any(p.requires_grad for p in resumed.parameters())
    refrozen = load_teacher(r, model, torch.device("cpu"), tmp_path / "teacher.safetensors", fresh=True)
    assert torch.equal(refrozen.state_dict()[w], model.state_dict()[w])
    # a later phase may keep distilling an earlier phase's teacher, never re-freezing it
    (tmp_path / "teacher.safetensors").rename(tmp_path / "p2_teacher.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    later = load_teacher({**r, "guidance_teacher": "phase 2"}, model, torch.device("cpu"),
                         tmp_path / "p3_teacher.safetensors")
    assert torch.equal(later.state_dict()[w], refrozen.state_dict()[w])
    assert not (tmp_path / "p3_teacher.safetensors").exists()
    with pytest.raises(ValueError, match="p1_teacher"):
        load_teacher({**r, "guidance_teacher": "phase 1"}, model, torch.device("cpu"), tmp_path / "p3_teacher.safetensors")
    with pytest.raises(ValueError, match="phase N"):
        load_teacher({**r, "guidance_teacher": "phase two"}, model, torch.device("cpu"), tmp_path / "p3_teacher.safetensors")
    with pytest.raises(ValueError, match="guidance_target = 'truth'"):
        load_teacher({**r, "guidance_target": "truth"}, model, torch.device("cpu"), tmp_path / "teacher.safetensors")



def test_weight_ema_is_the_exponential_average_of_the_steps():
    """WeightEMA after steps w1, w2 from w0: d^2 w0 + d (1-d) w1 + (1-d) w2, per weight; a resumed
    average continues from its saved shadow, and the live weights are never touched."""
    from streamer.world.train import WeightEMA

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    w0 = net.weight.detach().clone()
    ema = WeightEMA(net, 0.9)
    steps = [torch.randn(2, 3), torch.randn(2, 3)]
    with torch.no_grad():
        net.weight.copy_(steps[0])
    ema.update()
    with torch.no_grad():
        net.weight.copy_(steps[1])
    ema.update()
    want = 0.81 * w0 + 0.09 * steps[0] + 0.1 * steps[1]
    torch.testing.assert_close(ema.state_dict(net)["weight"], want)
    assert torch.equal(net.weight, steps[1])
    resumed = WeightEMA(net, 0.9, state=ema.shadow)
    torch.testing.assert_close(resumed.state_dict(net)["weight"], want)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(net, 1.0)


def test_ema_decay_writes_the_average_and_keeps_the_live_weights_for_a_resume(tmp_path, monkeypatch):
    """ema_decay in a fine-tune: dit.safetensors holds the averaged weights (the live ones stay in
    dit_last.pt, beside the average, for a resume); without it dit.safetensors is the live model."""
    from safetensors.torch import load_file

    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    args = ["train", "--smoke", "2", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1"]
    w = "blocks.0.ffn.net.2.weight"
    init = load_file(str(WEIGHTS_DIR / "dit.safetensors"))[w].float()
    for decay in (0.5, None):
        recipe = {**base, "finetune": {**ft, "init": str(WEIGHTS_DIR), "lr": 1e-2, "warmup": 0,
                                       **({"ema_decay": decay} if decay else {})}}
        monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
        out = tmp_path / f"ft{decay}"
        assert main(args + ["--out", str(out)]) == 0
        state = torch.load(out / "dit_last.pt", weights_only=True)
        shipped = load_file(str(out / "dit.safetensors"))[w]
        live = state["model"][w]
        assert not torch.equal(live, init)  # it trained
        if decay:
            assert "weights averaged with decay 0.5" in (out / "train.log").read_text()
            torch.testing.assert_close(shipped, state["ema"][w])
            assert not torch.allclose(shipped, live)
        else:
            assert "ema" not in state
            torch.testing.assert_close(shipped, live)


def test_a_phase_that_averages_hands_the_next_phase_its_average(tmp_path, monkeypatch):
    """Phase 1 starts from phase 0's weight average (its dit.safetensors), not its live weights, as
    a run started from phase 0's folder would; a phase without ema_decay hands on its live weights
    (which its dit.safetensors then holds)."""
    from safetensors.torch import load_file

    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    seen = []
    inner = train._train_dit_phase

    def spy(recipe, r, model, *args, **kw):
        out = args[5]
        if (out / "dit.safetensors").is_file():
            on_disk = load_file(str(out / "dit.safetensors"))
            seen.append(all(torch.equal(v.float(), on_disk[k].float()) for k, v in model.state_dict().items()))
        return inner(recipe, r, model, *args, **kw)

    monkeypatch.setattr(train, "_train_dit_phase", spy)
    for phases, averaged in [([{"ema_decay": 0.5}, {}], True), ([{}, {}], False)]:
        recipe = {**base, "finetune": {**ft, "init": str(WEIGHTS_DIR), "phases": phases}}
        monkeypatch.setattr(train, "load_recipe", lambda path, recipe=recipe: recipe)
        seen.clear()
        out = tmp_path / str(len(phases[0]))
        assert main(["train", "--smoke", "3", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1",
                     "--out", str(out)]) == 0
        assert seen == [True]  # phase 1 began on the weights phase 0 wrote
        assert ("phase 1 starts from phase 0's weight average" in (out / "train.log").read_text()) == averaged


def test_soup_with_start_ends_the_phase_on_the_mean_of_its_start_and_its_average(tmp_path, monkeypatch):
    """soup_with_start = 0.5 with ema_decay: the phase's dit.safetensors (and the weights the next
    phase starts from, in dit_last.pt) are 0.5 * the phase start + 0.5 * the weight average."""
    from safetensors.torch import load_file

    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    recipe = {**base, "finetune": {**ft, "init": str(WEIGHTS_DIR), "lr": 1e-2, "warmup": 0, "ema_decay": 0.5,
                                   "soup_with_start": 0.5}}
    monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
    ends = []
    real = train.soup_into

    def spy(model, start, a, weight_ema=None):
        ends.append({k: v.clone() for k, v in weight_ema.state_dict(model).items()})
        real(model, start, a, weight_ema)

    monkeypatch.setattr(train, "soup_into", spy)
    out = tmp_path / "ft"
    assert main(["train", "--smoke", "2", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1",
                 "--out", str(out)]) == 0
    w = "blocks.0.ffn.net.2.weight"
    init = load_file(str(WEIGHTS_DIR / "dit.safetensors"))[w].float()
    torch.testing.assert_close(load_file(str(out / "start.safetensors"))[w], init)
    assert len(ends) == 1 and not torch.allclose(ends[0][w], init)
    want = 0.5 * init + 0.5 * ends[0][w]
    torch.testing.assert_close(load_file(str(out / "dit.safetensors"))[w], want)
    torch.testing.assert_close(torch.load(out / "dit_last.pt", weights_only=True)["model"][w], want)
    assert "souped with the phase start: 0.5 x end + 0.5 x start" in (out / "train.log").read_text()
    recipe["finetune"]["soup_with_start"] = 1.0
    assert main(["train", "--smoke", "1", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1",
                 "--out", str(tmp_path / "bad")]) == 2


def _refit_recipe(init) -> dict:
    """The default recipe with a [refit] stage from `init`: an autoencoder round, then two phases."""
    base = load_recipe(DEFAULT_RECIPE)
    return {**base, "refit": {"init": str(init), "lr": 2e-4, "vae": {"lr": 5e-4, "latent_noise": 0.02, "crop": 64},
                              "phases": [{"text_only": 0.7}, {"soup_with_start": 0.5}]}}


def test_refit_trains_the_autoencoder_on_then_the_dit_on_its_new_latents(tmp_path, monkeypatch, capsys):
    """--stage refit: the init's autoencoder trains on (its latent statistics change), then the init's
    DiT is fine-tuned in [refit]'s phases on the new latents; the folder streams in the pipeline.
    --quiet leaves the terminal silent (no log lines, no progress bars)."""
    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR, Pipeline
    from streamer.session import Session

    monkeypatch.setattr(train, "load_recipe", lambda path: _refit_recipe(WEIGHTS_DIR))
    out = tmp_path / "refit"
    assert main(["train", "--smoke", "2", "--stage", "refit", "--device", "cpu", "--out", str(out), "--quiet",
                 "--threads", "1"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == "", printed.err[-300:]
    log = (out / "train.log").read_text()
    assert log.index("vae from") < log.index("vae phase 0 done") < log.index("refit: the DiT from")
    assert log.index("refit: the DiT from") < log.index("refit phase 0: text_only = 0.7") < log.index(
        "refit phase 1: soup_with_start = 0.5")
    old, new = TinyVAE.from_file(WEIGHTS_DIR / "vae.safetensors"), TinyVAE.from_file(out / "vae.safetensors")
    assert not torch.equal(old.latent_std, new.latent_std)  # the encoder trained: new statistics
    assert any(not torch.equal(a, b) for a, b in zip(old.encoder.parameters(), new.encoder.parameters()))
    pipe = Pipeline.load_default(out, device="cpu", dtype=torch.float32)
    chunk = Session(pipe, "a red circle on a grass background", pipe.stream_config()).step()
    assert chunk.frames.shape[1:] == (128, 128, 3)


def test_refit_without_init_or_autoencoder_round_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR

    no_init = _refit_recipe(WEIGHTS_DIR)
    del no_init["refit"]["init"]
    no_vae = _refit_recipe(WEIGHTS_DIR)
    del no_vae["refit"]["vae"]
    missing = _refit_recipe(tmp_path / "none")
    for recipe, words in [(no_init, "needs a [refit] section with init"), (no_vae, "needs a [refit.vae]"),
                          (missing, "recipe [refit] init: no ")]:
        monkeypatch.setattr(train, "load_recipe", lambda path, recipe=recipe: recipe)
        code = main(["train", "--smoke", "1", "--stage", "refit", "--device", "cpu", "--out", str(tmp_path / "x"),
                     "--quiet", "--threads", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err


def test_every_shipped_recipe_uses_known_keys_and_a_typo_is_one_line(tmp_path, monkeypatch, capsys):
    """check_recipe_keys: the repository's recipes pass; a misspelt key (here in a fine-tune phase)
    stops `streamer train` with one line naming it and the key it resembles, exit 2, before training."""
    from pathlib import Path

    import streamer.world.train as train
    from streamer.cli import main
    from streamer.world.train import check_recipe_keys

    root = Path(__file__).parent.parent
    recipes = sorted((root / "recipes").rglob("*.toml"))
    assert len(recipes) >= 4
    for path in recipes + [root / "streamer" / "weights" / "recipe.toml"]:
        check_recipe_keys(load_recipe(path))
    base = load_recipe(DEFAULT_RECIPE)
    bad = {**base, "finetune": {**base["finetune"], "phases": [{}, {"ema_decy": 0.99}]}}
    monkeypatch.setattr(train, "load_recipe", lambda path: bad)
    assert main(["train", "--smoke", "1", "--device", "cpu", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[finetune] phase 1: unknown key 'ema_decy'" in err[0] and "'ema_decay'" in err[0]
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="top level: unknown key 'sead'"):
        check_recipe_keys({**base, "sead": 1})
    with pytest.raises(ValueError, match=r"\[decoder\]: unknown key 'temporal_wieght' \(did you mean 'temporal_weight'"):
        check_recipe_keys({**base, "decoder": {**base["decoder"], "temporal_wieght": 5.0}})


def _init_folder(folder, abs_pos):
    """A fine-tune `init` folder: the shipped DiT and autoencoder, the DiT's absolute position
    embedding replaced by `abs_pos` (a (1, 192, 8, 8) tensor), or removed when it is None."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from streamer.pipeline import WEIGHTS_DIR

    folder.mkdir(parents=True)
    shutil.copy(WEIGHTS_DIR / "vae.safetensors", folder / "vae.safetensors")
    with safe_open(str(WEIGHTS_DIR / "dit.safetensors"), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "abs_pos"}
    if abs_pos is not None:
        sd["abs_pos"] = abs_pos.to(next(iter(sd.values())).dtype)
    save_file(sd, str(folder / "dit.safetensors"), metadata=meta)
    return folder


def test_a_fine_tune_keeps_its_inits_position_embedding(tmp_path, monkeypatch):
    """An init with a position embedding (the shipped DiT from v8 on) fine-tuned by a recipe that
    never sets absolute_positions (every recipe before v8's): the embedding is built, loaded with
    the init's values and kept frozen, so the run starts from the init's behaviour and ends with it
    unchanged; a phase that sets the key then trains it from those values, not from zero."""
    from safetensors.torch import load_file

    import streamer.world.train as train
    from streamer.cli import main

    torch.manual_seed(0)
    pos = (0.05 * torch.randn(1, 192, 8, 8)).half().float()
    init = _init_folder(tmp_path / "init", abs_pos=pos)
    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    args = ["train", "--smoke", "1", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1"]
    for name, phases in (("plain", [{}]), ("trained", [{}, {"absolute_positions": True}])):
        recipe = {**base, "finetune": {**ft, "init": str(init), "lr": 1e-3, "phases": phases}}
        monkeypatch.setattr(train, "load_recipe", lambda path, recipe=recipe: recipe)
        assert main(args + ["--out", str(tmp_path / name)]) == 0
        got = load_file(str(tmp_path / name / "dit.safetensors"))["abs_pos"].float()
        moved = (got - pos).abs().max().item()
        assert (moved < 1e-6) if name == "plain" else (1e-6 < moved < 0.05), (name, moved)


def test_absolute_positions_fine_tune_starts_from_weights_without_them(tmp_path, monkeypatch):
    """absolute_positions = true in a later phase: a fine-tune of a DiT without a position embedding
    (the shipped one up to v7) adds one of the world's token grid (128 px / 16 = 8 x 8), zero and
    frozen in the phases before (no optimizer group, no gradient), trained at abs_pos_lr_scale x the
    lr in the phase that asks, and writes weights whose config the pipeline loads and streams from."""
    from safetensors.torch import load_file

    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import Pipeline

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    phases = [{}, {"absolute_positions": True, "abs_pos_lr_scale": 30.0}]
    init = _init_folder(tmp_path / "init", abs_pos=None)
    recipe = {**base, "finetune": {**ft, "init": str(init), "lr": 1e-3, "phases": phases}}
    monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
    scales = []  # (lr_scale, parameter count) of each optimizer group
    adamw = torch.optim.AdamW

    def recording_adamw(groups, **kw):
        scales.append([(g["lr_scale"], sum(p.numel() for p in g["params"])) for g in groups])
        return adamw(groups, **kw)

    frozen = []  # per phase: whether the embedding takes no gradient, and is still zero
    phase = train._train_dit_phase

    def recording_phase(recipe, r, model, *a, **kw):
        frozen.append((not model.abs_pos.requires_grad, bool((model.abs_pos == 0).all())))
        return phase(recipe, r, model, *a, **kw)

    monkeypatch.setattr(train, "_train_dit_phase", recording_phase)

    monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)
    out = tmp_path / "ft"
    assert main(["train", "--smoke", "2", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1",
                 "--out", str(out)]) == 0
    pos = load_file(str(out / "dit.safetensors"))["abs_pos"]
    assert pos.shape == (1, 192, 8, 8) and pos.abs().max() > 0
    assert len(scales[0]) == 1 and frozen == [(True, True), (False, True)]  # zero through phase 0, then trained
    assert scales[1][0][0] == 1.0 and scales[1][1] == (30.0, 192 * 8 * 8)  # phase 1: it alone learns faster
    assert scales[0][0][1] == scales[1][0][1]
    pipe = Pipeline.load_default(out, device=torch.device("cpu"), dtype=torch.float32)
    assert pipe.model.config.abs_pos_grid == (8, 8)
    from streamer.session import Session

    assert Session(pipe, "a red circle on a grass background", pipe.stream_config(size=(128, 128))).step().frames.shape[0] > 0


def _shipped_vae():
    from streamer.pipeline import WEIGHTS_DIR

    return TinyVAE.from_file(WEIGHTS_DIR / "vae.safetensors")


def test_rerender_continues_the_truth_from_where_the_sample_put_its_sprites():
    """rerender: decode the model's first latent frame, find each sprite near its spawn point, and
    re-render the text-only clip from there (same motion), encoded; a sprite too far from its spawn
    point (or not drawn) keeps the world's spawn point."""
    from streamer.world.train import own_starts, rerender, sprite_cells

    vae, w = _shipped_vae(), World()
    seed = next(s for s in range(40) if len(w.scene(s).sprites) == 2)
    base = w.clip(seed, 9, spawn=True)
    spawn = w.spawn_points(2)
    starts = spawn + np.array([[6.0, -4.0], [0.0, 30.0]], np.float32)  # the second beyond `within`
    drawn = w.clip(seed, 9, spawn=True, starts=starts)
    with torch.no_grad():
        first = vae.encode(to_video(drawn.frames[None]))[:, :, :1]
    r = {"paraphrase": False, "rerender_within": 16.0}
    x0, cells, new = rerender(w, vae, [base], first, 9, r)
    got = new[0].trajectory.tracks[0]
    assert np.hypot(*(got[0] - starts[0])) < 1.5  # the sample's place, to within the autoencoder's blur
    assert np.allclose(got[1], spawn[1])  # too far: the spawn point
    with torch.no_grad():
        assert torch.allclose(x0, vae.encode(to_video(new[0].frames[None])))
    assert torch.equal(cells, sprite_cells(new, 3, (16, 16)))
    blank = base.background.copy()  # nothing drawn: the spawn points
    assert np.allclose(own_starts(w, base, blank, 16.0), spawn)


class _Flow(torch.nn.Module):
    """A stand-in DiT for sample_loss: v = (x - x0) / sigma, so its x0 prediction is x0 (None: v = 0);
    records whether each call had gradients on."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.grad, self.w = x0, [], torch.nn.Parameter(torch.ones(()))

    def encode_text(self, text):
        return text

    def forward(self, x, t, text, chunk_frames=None, tracks=None):
        self.grad.append(torch.is_grad_enabled())
        sigma = t[:, None, :, None, None] / 1000
        target = torch.zeros_like(x) if self.x0 is None else (x - self.x0) / sigma
        return self.w * target


def test_sample_loss_regresses_the_samplers_own_x0_on_the_truth_with_gradient_at_the_exit_step():
    """sample_loss samples a prompt alone's first chunk with the few-step sampler and regresses the x0
    prediction of one exit step (gradients only there, as Self-Forcing) on the truth: zero for a
    model whose x0 prediction is the truth, large for one that predicts the noise; with rerender,
    near zero still (the truth re-rendered where the perfect sample drew the sprites)."""
    from streamer.world.train import sample_loss

    class Text:
        def encode(self, prompts):
            return torch.zeros(len(prompts), 4, 8)

    vae, w = _shipped_vae(), World()
    r = {"batch": 2, "paraphrase": False, "track_dim": 8, "sprite_weight": 4.0}
    exits = set()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        clips = [w.clip(int(rng.integers(1 << 30)), 9, spawn=True) for _ in range(2)]
        with torch.no_grad():
            truth = vae.encode(to_video(np.stack([c.frames for c in clips])))
        perfect, blind = _Flow(truth), _Flow(None)
        for rr in (r, {**r, "rerender": True}):
            exact = sample_loss(perfect, vae, w, np.random.default_rng(seed), rr, Text(), 3, torch.device("cpu"))
            wrong = sample_loss(blind, vae, w, np.random.default_rng(seed), rr, Text(), 3, torch.device("cpu"))
            assert wrong > 0.5
            assert exact < (1e-8 if rr is r else 0.05 * wrong)
            exact.backward()
        calls = perfect.grad[: len(perfect.grad) // 2]
        assert calls[-1] and not any(calls[:-1])  # the exit step alone has gradients
        exits.add(len(calls) - 1)
    assert len(exits) > 1  # the exit step is drawn


def test_fine_tune_runs_sample_steps_and_rerendered_rollouts(tmp_path, monkeypatch, capsys):
    """A fine-tune with `sample_loss` (every step on the model's own first-chunk sample), one with
    `own_background` on rollouts from noise, one with
    `rerender` on rollouts from noise of text-only clips, and one with `text_only_offset` on rollouts
    from a true first chunk (`video_start`) run from the shipped weights and log their modes; a
    negative offset is exit 2."""
    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import WEIGHTS_DIR

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    phases = [{"sample_loss": 1.0, "rerender": True},
              {"sample_loss": 0.0, "rerender": True, "noise_rollout": 1.0, "image_start": 0.0, "text_only": 1.0},
              {"sample_loss": 0.0, "noise_rollout": 1.0, "image_start": 0.0, "text_only": 0.5, "own_background": 1.0},
              {"sample_loss": 0.0, "image_start": 1.0, "rollout": 1.0, "text_only": 1.0, "spawn_text": True,
               "video_start": 1.0, "text_only_offset": 200},
              {"sample_loss": 0.0, "image_start": 0.0, "noise_rollout": 1.0, "text_only": 0.5, "own_background": 1.0,
               "sink_layout": 1.0, "sink_gap": 24},
              {"sample_loss": 0.0, "image_start": 1.0, "rollout": 1.0, "video_start": 0.0, "text_only": 0.5,
               "sink_layout_image": 1.0, "sink_gap": 24},
              {"sample_loss": 0.0, "image_start": 0.0, "ghost": 1.0, "noise_rollout": 1.0},
              {"sample_loss": 0.0, "image_start": 0.0, "noise_rollout": 1.0, "text_only": 1.0, "own_background": 1.0,
               "own_background_text": True, "own_background_sprites": True},
              {"sample_loss": 0.0, "image_start": 0.0, "fade": 1.0, "noise_rollout": 1.0}]
    recipe = {**base, "finetune": {**ft, "init": str(WEIGHTS_DIR), "phases": phases}}
    monkeypatch.setattr(train, "load_recipe", lambda path: recipe)
    layouts = []  # (blocks, text_offset) of each flow step's batch
    batch = train.dit_batch

    def recording_batch(*a, blocks=None, text_offset=0, **kw):
        layouts.append((blocks, text_offset))
        return batch(*a, blocks=blocks, text_offset=text_offset, **kw)

    monkeypatch.setattr(train, "dit_batch", recording_batch)
    out = tmp_path / "ft"
    assert main(["train", "--smoke", "1", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1",
                 "--out", str(out)]) == 0
    assert layouts[-4] == ((4, 3, 3), 200)  # phase 3 (phases 6 and 8, ghost and fade steps, build their own batches): a video start: a clean chunk more, text-only clips later on
    log = (out / "train.log").read_text()
    assert "finetune phase 0: step 0 loss" in log and "mode sample" in log and "mode noise rollout" in log
    assert "finetune phase 3: step 0 loss" in log and "mode rollout" in log and "video 1" in log
    assert "finetune phase 2: step 0 loss" in log and "mode noise rollout" in log.split("finetune phase 2: step 0")[1].split("\n")[0]
    assert "sink 1" in log.split("finetune phase 4: step 0")[1].split("\n")[0]  # Deep Sink's layout
    # and an image start's: the sink block, then image_chunks chunks
    assert layouts[-2] == ((3, 3, 3, 3), 0) and "sink 1" in log.split("finetune phase 5: step 0")[1].split("\n")[0]
    assert "mode ghost" in log.split("finetune phase 6: step 0")[1].split("\n")[0]  # a copy of the sprite, erased
    assert "mode noise rollout" in log.split("finetune phase 7: step 0")[1].split("\n")[0]
    assert "mode fade" in log.split("finetune phase 8: step 0")[1].split("\n")[0]  # the sprite fades, whole again
    for i, wrong in enumerate(({"text_only_offset": -4}, {"track_offset": 2.5}, {"cross_share": 1.5},
                               {"own_background": -1.0}, {"own_background": 1.0, "noise_rollout": 0.0},
                               {"own_background_text": "yes"}, {"own_background_text": True},
                               {"sink_layout": 1.5}, {"sink_gap": 0},
                               {"sink_layout": 0.5, "rerender": True}, {"sink_layout_image": 2.0},
                               {"sink_layout_image": 0.5, "image_start": 0.0}, {"ghost": 1.5},
                               {"ghost": 0.5, "latent_frames": 6}, {"ghost_alpha": [0.5, 1.5]},
                               {"own_background_sprites": True}, {"fade": -0.5}, {"fade": 0.5, "latent_frames": 6},
                               {"fade_alpha": [0.5, 1.0]}, {"fade_alpha": [0.6, 0.2]}, {"fade_alpha": [0.0, 0.5]})):
        bad = {**recipe, "finetune": {**ft, "init": str(WEIGHTS_DIR), "spawn_text": True, "video_start": 0.5,
                                      **wrong}}
        monkeypatch.setattr(train, "load_recipe", lambda path: bad)
        assert main(["train", "--smoke", "1", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1",
                     "--out", str(tmp_path / f"bad{i}")]) == 2, wrong
        assert next(iter(wrong)) in capsys.readouterr().err


def test_track_offset_and_cross_share_change_only_the_clips_with_tracks():
    """`track_offset`: each clip with tracks is its seed's clip from a frame drawn in
    [0, track_offset); `cross_share`: that share of their sprites cross the frame (the world's
    other motions keep their relative weights). Text-only clips stay the text-only layout from
    frame 0, and neither key changes a batch when absent."""
    from dataclasses import replace

    from streamer.world.train import dit_batch

    w = World()
    r = {"batch": 4, "paraphrase": False, "text_dropout": 0.0, "track_dropout": 0.0, "text_only": 0.5,
         "spawn_text": True}
    batch = lambda r: dit_batch(w, np.random.default_rng(5), r, _IdentityVae(), _ZeroText(), TrajectoryEncoder(8), 5, 2, 1,  # noqa: E731
                                torch.device("cpu"), with_clips=True)
    got = batch({**r, "track_offset": 300, "cross_share": 1.0})
    rng = np.random.default_rng(5)
    seeds = [int(rng.integers(1 << 30)) for _ in range(4)]
    text_only = rng.random(4) < 0.5
    offsets = rng.integers(0, 300, 4) * ~text_only
    assert text_only.any() and (offsets > 0).any()
    crossing = World(replace(w.config, motion_weights=(0.0, 0.0, 0.0, 1.0)))
    for clip, seed, t, o in zip(got[4], seeds, text_only, offsets):
        want = w.clip(seed, 5, spawn=True) if t else crossing.clip(seed, 5 + int(o))
        assert clip.scene.motions == (["spawn"] * len(want.scene.sprites) if t else want.scene.motions)
        assert np.array_equal(clip.frames, want.frames[int(o):])
        if not t:
            assert set(clip.scene.motions) == {"cross"}
    plain = batch(r)
    assert all(np.array_equal(c.frames, (w.clip(s, 5, spawn=True) if t else w.clip(s, 5)).frames)
               for c, s, t in zip(plain[4], seeds, text_only))
    with pytest.raises(ValueError, match="motion_weights"):
        World(replace(w.config, motion_weights=(1.0, 0.0)))


def test_exit_start_places_tracked_clips_just_before_their_sprites_leave_the_view():
    """`exit_start`: a clip with tracks whose first track_offset frames hold a moment when every
    sprite has left the view starts 4-16 frames before it (the truth then shows an empty frame
    while the track channels are zero); one without such a moment keeps its uniform offset."""
    from streamer.world.train import dit_batch

    r = {"batch": 12, "paraphrase": False, "text_dropout": 0.0, "track_dropout": 0.0, "text_only": 0.0,
         "track_offset": 240, "cross_share": 1.0, "exit_start": 1.0}
    clips = dit_batch(World(), np.random.default_rng(0), r, _IdentityVae(), _ZeroText(), TrajectoryEncoder(8), 37, 10, 3,
                      torch.device("cpu"), with_clips=True)[4]
    placed = 0
    for clip in clips:
        gone = ~clip.trajectory.visible.any(1)
        if gone.any():
            first = int(np.argmax(gone))
            placed += 4 <= first <= 16 and not gone[:first].any()
    assert placed >= 6  # most all-crossing clips of one or two sprites have such a moment in 240 frames


def test_outside_tracks_get_their_own_code_only_when_asked():
    """TrajectoryEncoder(outside=True): a track that has left the frame is placed at its nearest
    edge cell with its ID negated; a track not visible inside the frame (not started, occluded)
    stays zeros; visible points are placed as before. outside=False (MotionStream's encoding, the
    default): out of view is zeros, as no track is."""
    from streamer.models.trajectory_encoder import track_id_embedding
    from streamer.trajectory import Trajectory

    # track 0 in view at (20, 60), track 1 out past the right edge at y = 60, track 2 hidden inside
    pts = np.array([[[20.0, 60.0], [150.0, 60.0], [64.0, 64.0]]], np.float32)
    vis = np.array([[True, False, False]])
    traj = Trajectory(pts, vis, 16.0, 128, 128)
    emb = torch.from_numpy(track_id_embedding(3, 8))
    plain = TrajectoryEncoder(8)(traj, [0], (16, 16))[0, :, 0]
    coded = TrajectoryEncoder(8, outside=True)(traj, [0], (16, 16))[0, :, 0]
    assert torch.allclose(plain.sum((1, 2)), emb[0], atol=1e-5)  # only track 0
    # the right edge column holds -ID of track 1 (split over two rows by the bilinear splat)
    edge = coded[:, :, 15]
    assert torch.allclose(edge.sum(1), -emb[1], atol=1e-5)
    assert torch.allclose(coded[:, :, :15].sum((1, 2)), emb[0], atol=1e-5)  # track 0 as before, track 2 nowhere
    assert torch.equal(plain[:, :, 15], torch.zeros_like(plain[:, :, 15]))


def test_track_outside_fine_tune_writes_a_model_the_pipeline_encodes_for(tmp_path, monkeypatch):
    """`track_outside = true` in a fine-tune: the run trains with the outside code, its weights'
    config says so, and the pipeline loaded from them places an out-of-view track (the default
    model's does not); a further fine-tune from those weights keeps it without the key."""
    import streamer.world.train as train
    from streamer.cli import main
    from streamer.pipeline import Pipeline
    from streamer.trajectory import Trajectory

    base = load_recipe(DEFAULT_RECIPE)
    ft = {k: v for k, v in base["finetune"].items() if k != "phases"}
    init = _init_folder(tmp_path / "init", abs_pos=torch.zeros(1, 192, 8, 8))
    seen = []  # the trainer's track encoder, as each batch receives it
    batch = train.dit_batch

    def recording_batch(world, rng, r, vae, text_enc, tracks_enc, *a, **kw):
        seen.append(tracks_enc.outside)
        return batch(world, rng, r, vae, text_enc, tracks_enc, *a, **kw)

    monkeypatch.setattr(train, "dit_batch", recording_batch)
    args = ["train", "--smoke", "1", "--stage", "finetune", "--device", "cpu", "--quiet", "--threads", "1"]
    for name, src, extra in (("coded", init, {"track_outside": True}), ("again", tmp_path / "coded", {})):
        recipe = {**base, "finetune": {**ft, "init": str(src), "phases": [extra]}}
        monkeypatch.setattr(train, "load_recipe", lambda path, recipe=recipe: recipe)
        assert main(args + ["--out", str(tmp_path / name)]) == 0
    assert seen and all(seen)
    traj = Trajectory(np.array([[[150.0, 60.0]]], np.float32), np.array([[False]]), 16.0, 128, 128)
    coded = Pipeline.load_default(tmp_path / "again", device=torch.device("cpu"), dtype=torch.float32)
    assert coded.model.config.track_outside
    assert coded.track_condition(traj, 128, 128)([0]).abs().sum() > 0
    shipped = Pipeline.load_default(device=torch.device("cpu"), dtype=torch.float32)
    assert not shipped.model.config.track_outside
    assert shipped.track_condition(traj, 128, 128)([0]).abs().sum() == 0


class _StrideVae:
    """An autoencoder stub with the real temporal layout: latent frame j is video frame 4j (the last
    of the four video frames 4j-3..4j that it holds; latent frame 0 holds frame 0 alone)."""

    def encode(self, video):
        return video[:, :, ::4]


def test_sink_layout_batch_is_one_stream_with_its_middle_left_out():
    """gap (the `sink_layout` steps): latent frames 0..chunk-1 are the clip's start, the later ones
    the same stream `gap` latent frames further on, frames, tracks and sprite cells alike, for clips
    with tracks and prompts alone (spawn layout); image-start blocks are refused."""
    from streamer.world.train import dit_batch, sprite_cells

    w, enc = World(), TrajectoryEncoder(8)
    r = {"batch": 2, "paraphrase": False, "text_dropout": 0.0, "track_dropout": 0.0, "text_only": 0.5,
         "spawn_text": True}
    chunk, n_lat, gap = 2, 6, 4
    n_video = 1 + 4 * (n_lat - 1)
    rng = np.random.default_rng(2)
    x0, _, tracks, cells, clips, text_only = dit_batch(w, rng, r, _StrideVae(), _ZeroText(), enc, n_video, n_lat, chunk,
                                                      torch.device("cpu"), with_clips=True, gap=gap)
    assert x0.shape[2] == tracks.shape[2] == cells.shape[2] == n_lat
    rng = np.random.default_rng(2)
    seeds = [int(rng.integers(1 << 30)) for _ in range(2)]
    assert set(text_only.tolist()) == {True, False}  # both kinds of clip are checked
    stream_lat = [0, 1] + [chunk + gap + i for i in range(n_lat - chunk)]  # the stream's latent frames
    for b, (seed, t) in enumerate(zip(seeds, text_only)):
        whole = w.clip(seed, 1 + 4 * stream_lat[-1], spawn=bool(t))  # the uncut stream
        want = to_video(whole.frames[None])[:, :, [4 * j for j in stream_lat]]
        assert torch.equal(x0[b : b + 1], want)
        keep = 0.0 if t else 1.0  # a prompt alone has no tracks
        assert torch.allclose(tracks[b], keep * enc(whole.trajectory, stream_lat, x0.shape[-2:])[0])
        assert torch.equal(cells[b], sprite_cells([whole], stream_lat[-1] + 1, x0.shape[-2:])[0][:, stream_lat])
    assert clips[0].frames.shape[0] == 1 + 4 * (n_lat - chunk)  # the later clips, from 4 video frames before
    # an image start's layout (blocks of `chunk`, any gap): the same stream, so the same batch
    again = dit_batch(w, np.random.default_rng(2), r, _StrideVae(), _ZeroText(), enc, n_video, n_lat, chunk,
                      torch.device("cpu"), blocks=(chunk,) * (n_lat // chunk), gap=gap)
    assert torch.equal(again[0], x0) and torch.equal(again[2], tracks)
    with pytest.raises(ValueError, match="gap"):
        dit_batch(w, np.random.default_rng(2), r, _StrideVae(), _ZeroText(), enc, n_video, n_lat, chunk,
                  torch.device("cpu"), blocks=(1, 2, 2), gap=gap)


def test_ghost_batch_shows_the_sprite_twice_in_the_second_block_only():
    """`ghost` steps: a prompt alone's clip whose second block alone shows a copy of its sprite (same
    colour, on the sprite's own path, apart from it); that block has no loss, and the third block's
    loss weights the cells the copy has left as sprite cells."""
    from streamer.world.evaluate import PHANTOM_AREA, has_colour, regions
    from streamer.world.train import ghost_batch, sprite_cells

    w = World()
    r = {"batch": 3, "paraphrase": False, "track_dim": 8, "text_only_offset": 200}
    chunk, n_lat = 2, 6
    x0, text, tracks, weight, cells = ghost_batch(w, np.random.default_rng(5), r, _StrideVae(), _ZeroText(),
                                                  n_lat, chunk, torch.device("cpu"))
    assert x0.shape[2] == weight.shape[2] == cells.shape[2] == n_lat and not tracks.any()
    frames = ((x0.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8)
    prompts = []
    for b in range(3):
        rng = np.random.default_rng(5)  # the clip ghost_batch drew for batch item b, without its copy
        for _ in range(b + 1):
            seed, offset = int(rng.integers(1 << 30)), int(rng.integers(0, 200))
            n = int(rng.integers(len(w.spawn_scene(seed).sprites)))
            for _ in range(20):
                shift = int(rng.integers(24, 400)) * (1 if rng.random() < 0.5 else -1)
                start = max(0, offset + shift)
                path = w.trajectory(w.spawn_scene(seed), start + 1 + 4 * (n_lat - 1)).tracks[start:, n]
                clean = w.clip(seed, 1 + 4 * (n_lat - 1), spawn=True, offset=offset)
                gap = np.linalg.norm(clean.trajectory.tracks[4 * chunk - 3 : 4 * (2 * chunk - 1) + 1]
                                     - path[4 * chunk - 3 : 4 * (2 * chunk - 1) + 1, None], axis=-1)
                if gap.min() >= 2 * clean.scene.sprites[n].radius + 4:
                    break
        rgb = clean.scene.sprites[n].rgb
        blobs = [int((regions(has_colour(f, rgb))[1] >= PHANTOM_AREA).sum()) for f in frames[b]]
        named = sum(sp.rgb == rgb for sp in clean.scene.sprites)
        copy = [j for j in range(n_lat) if blobs[j] > named]
        assert copy == list(range(chunk, 2 * chunk)), (b, blobs)  # the second block, and only it
        for j in (*range(chunk), *range(2 * chunk, n_lat)):  # elsewhere the clean clip itself
            assert np.array_equal(frames[b, j], clean.frames[4 * j])
        true = sprite_cells([clean], n_lat, x0.shape[-2:])[0]
        assert torch.equal(weight[b, :, : 2 * chunk], true[:, : 2 * chunk])
        assert (weight[b, :, 2 * chunk :] >= true[:, 2 * chunk :]).all()
        assert weight[b, :, 2 * chunk :].sum() > true[:, 2 * chunk :].sum()  # where the copy was
        prompts.append(clean.prompt)
    assert (cells[:, :, chunk : 2 * chunk] == 0).all() and (cells[:, :, :chunk] == 1).all()
    assert (cells[:, :, 2 * chunk :] == 1).all()
    with pytest.raises(ValueError, match="ghost"):
        ghost_batch(w, np.random.default_rng(5), r, _StrideVae(), _ZeroText(), 5, chunk, torch.device("cpu"))


def test_ghost_alpha_blends_a_faint_copy():
    """`ghost_alpha` = [a, a]: the second block is the clean clip blended with the full copy's frames
    at opacity a; the other blocks are the same as with a full copy."""
    from streamer.world.train import ghost_batch

    w = World()
    chunk, n_lat = 2, 6
    full = {"batch": 1, "paraphrase": False, "track_dim": 8, "text_only_offset": 200}
    make = lambda r: ghost_batch(w, np.random.default_rng(9), r, _StrideVae(), _ZeroText(), n_lat, chunk,  # noqa: E731
                                 torch.device("cpu"))[0]
    px = lambda x: ((x[0].permute(1, 2, 3, 0) + 1) * 127.5).round().numpy()  # noqa: E731  [F, H, W, 3]
    x_full, x_half = px(make(full)), px(make({**full, "ghost_alpha": [0.5, 0.5]}))
    rng = np.random.default_rng(9)
    seed, offset = int(rng.integers(1 << 30)), int(rng.integers(0, 200))
    clean = w.clip(seed, 1 + 4 * (n_lat - 1), spawn=True, offset=offset).frames[::4].astype(float)
    second = slice(chunk, 2 * chunk)
    assert np.array_equal(x_full[:chunk], clean[:chunk]) and np.array_equal(x_half[2 * chunk :], x_full[2 * chunk :])
    assert (x_full[second] != clean[second]).any()  # the full copy is there
    assert np.abs(x_half[second] - (0.5 * clean[second] + 0.5 * x_full[second])).max() <= 1.0  # and half of it


def test_fade_batch_fades_the_sprite_in_the_second_block_only():
    """`fade` steps: a prompt alone's clip whose sprites fade into its background over the second
    block (opacity falling linearly to `fade_alpha`'s draw by the block's last video frame), whole
    before and after; the second block has no loss and the sprite cells are the true ones."""
    from streamer.world.train import fade_batch, sprite_cells

    w = World()
    chunk, n_lat = 2, 6
    r = {"batch": 2, "paraphrase": False, "track_dim": 8, "text_only_offset": 200, "fade_alpha": [0.3, 0.3]}
    x0, text, tracks, weight, cells = fade_batch(w, np.random.default_rng(4), r, _StrideVae(), _ZeroText(),
                                                 n_lat, chunk, torch.device("cpu"))
    assert x0.shape[2] == weight.shape[2] == cells.shape[2] == n_lat and not tracks.any()
    px = ((x0.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().numpy()  # [B, F, H, W, 3]
    rng = np.random.default_rng(4)
    first, last = 4 * chunk - 3, 4 * (2 * chunk - 1)
    for b in range(2):
        seed, offset = int(rng.integers(1 << 30)), int(rng.integers(0, 200))
        rng.uniform(0.3, 0.3)  # the clip's opacity draw
        clean = w.clip(seed, 1 + 4 * (n_lat - 1), spawn=True, offset=offset)
        frames, bg = clean.frames.astype(float), clean.background.astype(float)
        for j in range(n_lat):
            t = 4 * j
            if chunk <= j < 2 * chunk:
                opacity = 1 - 0.7 * (t - first + 1) / (last - first + 1)
                assert np.abs(px[b, j] - (bg + opacity * (frames[t] - bg))).max() <= 1.0, (b, j)
                assert (px[b, j] != frames[t]).any()  # fainter than the truth
            else:
                assert np.array_equal(px[b, j], frames[t]), (b, j)
        assert torch.equal(weight[b], sprite_cells([clean], n_lat, x0.shape[-2:])[0])
    assert (cells[:, :, chunk : 2 * chunk] == 0).all() and (cells[:, :, :chunk] == 1).all()
    assert (cells[:, :, 2 * chunk :] == 1).all()
    with pytest.raises(ValueError, match="fade"):
        fade_batch(w, np.random.default_rng(4), r, _StrideVae(), _ZeroText(), 5, chunk, torch.device("cpu"))
    # an opacity drawn per clip from [lo, hi]: the second block's last latent frame (its last video
    # frame) shows each clip's sprite at that clip's own draw
    r = {**r, "batch": 3, "fade_alpha": [0.2, 0.7]}
    x0 = fade_batch(w, np.random.default_rng(6), r, _StrideVae(), _ZeroText(), n_lat, chunk, torch.device("cpu"))[0]
    px = ((x0.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().numpy()
    rng, drawn = np.random.default_rng(6), []
    for b in range(3):
        seed, offset = int(rng.integers(1 << 30)), int(rng.integers(0, 200))
        alpha = rng.uniform(0.2, 0.7)
        drawn.append(alpha)
        clean = w.clip(seed, 1 + 4 * (n_lat - 1), spawn=True, offset=offset)
        bg, j = clean.background.astype(float), 2 * chunk - 1
        assert np.abs(px[b, j] - (bg + alpha * (clean.frames[4 * j] - bg))).max() <= 1.0, b
    assert len({round(a, 3) for a in drawn}) == 3


def test_world_section_sets_world_config_fields_and_refuses_unknown_ones():
    from streamer.world.train import check_recipe_keys, world_config

    assert world_config({"world": {"preset": "world-128"}}).near_colours == 0.0
    cfg = world_config({"world": {"preset": "world-128", "near_colours": 0.5, "radius": [6, 9]}})
    assert cfg.near_colours == 0.5 and cfg.radius == (6, 9)
    for bad, needle in (({"near_colour": 0.5}, "near_colour"), ({"near_colours": 2.0}, "near_colours"),
                        ({"preset": "world-64"}, "world-64"), ({"near_colours": "half"}, "wrong kind")):
        with pytest.raises(ValueError, match=needle):
            check_recipe_keys({"world": {"preset": "world-128", **bad}})
