"""Training: a few optimizer steps reduce the loss on a fixed batch (DiT and autoencoder), and the
batch builder gives the shapes the teacher-forcing forward expects."""

import numpy as np
import torch

from streamer.models.tiny_vae import TinyVAE, TinyVAEConfig
from streamer.models.trajectory_encoder import TrajectoryEncoder
from streamer.models.wan import CausalWanModel, get_config
from streamer.world.train import flow_loss, load_recipe, to_video, DEFAULT_RECIPE
from streamer.trajectory import Trajectory
from streamer.world.scenes import World


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
