"""The causal Wan DiT against diffusers' WanTransformer3DModel, and its RoPE facts."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from streamer.models.rope import apply_rope, rope_band_dims, rope_cos_sin
from streamer.models.wan import CausalWanModel, get_config
from tests.conftest import randomize


def _pair(seed=0):
    cfg = get_config("tiny")
    ref = randomize(WanTransformer3DModel(**cfg.to_diffusers()), seed=seed).eval()
    ours = CausalWanModel(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return cfg, ref, ours


@torch.no_grad()
def test_bidirectional_matches_diffusers():
    cfg, ref, ours = _pair()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 5, 8, 12, generator=g)
    text = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.tensor([937.5, 250.0])
    expected = ref(x, t, text, return_dict=False)[0]
    got = ours(x, t[:, None].expand(2, 5), text)
    assert expected.abs().mean() > 0.1
    # residual difference: Wan computes the timestep sinusoid in float64, diffusers in float32
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token():
    """Per-frame timesteps equal diffusers' per-token (Wan 2.2 style) timesteps repeated per frame."""
    cfg, ref, ours = _pair(seed=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 3, 4, 6, generator=g)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.tensor([[0.0, 500.0, 833.3333]])
    tokens_per_frame = (4 // 2) * (6 // 2)
    expected = ref(x, t.repeat_interleave(tokens_per_frame, dim=1), text, return_dict=False)[0]
    torch.testing.assert_close(ours(x, t, text), expected, atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_rope_is_relative_and_unbounded(tiny_model):
    """Shifting every position changes nothing, far past the 1024-frame table of reference code."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 6, 4, 4, generator=g)
    text = torch.randn(1, 16, 32, generator=g)
    t = torch.full((1, 6), 500.0)
    base = tiny_model(x, t, text, chunk_frames=3)
    far = tiny_model(x, t, text, chunk_frames=3, frame_offset=1_000_000)
    torch.testing.assert_close(far, base, atol=1e-4, rtol=1e-4)


def test_rope_bands_and_rotation():
    assert rope_band_dims(128) == (44, 42, 42)
    x = torch.randn(1, 12, 2, 128, dtype=torch.float64).float()
    cos, sin = rope_cos_sin(torch.arange(3.0), 2, 2, 128)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps norms
    # token 0 sits at the origin of all three axes: no rotation at all
    torch.testing.assert_close(y[:, 0], x[:, 0])


@torch.no_grad()
def test_block_causal_mask_blocks_the_future(tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 6, 4, 4, generator=g)
    text = torch.randn(1, 16, 32, generator=g)
    t = torch.full((1, 6), 700.0)
    out = tiny_model(x, t, text, chunk_frames=3)
    x2 = x.clone()
    x2[:, :, 3:] += 1.0  # change only the second chunk
    out2 = tiny_model(x2, t, text, chunk_frames=3)
    torch.testing.assert_close(out2[:, :, :3], out[:, :, :3])
    assert (out2[:, :, 3:] - out[:, :, 3:]).abs().max() > 1e-2
    # bidirectional attention does let the second chunk change the first
    assert (tiny_model(x2, t, text)[:, :, :3] - tiny_model(x, t, text)[:, :, :3]).abs().max() > 1e-3


def test_parameter_count_of_the_real_size():
    with torch.device("meta"):
        model = CausalWanModel(get_config("wan2.1-1.3b"))
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800
    assert len(model.state_dict()) == 825


def test_bad_size_is_refused(tiny_model):
    with pytest.raises(ValueError, match="not divisible"):
        tiny_model(torch.zeros(1, 16, 3, 5, 4), torch.zeros(1, 3), torch.zeros(1, 16, 32))


@torch.no_grad()
def test_absolute_positions_start_neutral_and_then_tell_places_apart():
    """abs_pos_grid: at zero the model is the one without it (a fine-tune starts from its init's
    behaviour); once learned, the same content at two places gives two different outputs, which
    RoPE alone (relative positions) cannot do for a uniform input; another grid size is resized."""
    base = randomize(CausalWanModel(get_config("tiny"))).eval()
    model = CausalWanModel(get_config("tiny", abs_pos_grid=(4, 4))).eval()
    missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing == ["abs_pos"]
    x = torch.zeros(1, 16, 2, 8, 8)  # uniform frames: every token alike
    t = torch.full((1, 2), 500.0)
    text = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x, t, text), base(x, t, text))
    flat = base(x, t, text)
    assert (flat[..., :2, :2] - flat[..., 4:6, 4:6]).abs().max() < 1e-5  # no place differs without it
    model.abs_pos.normal_(generator=torch.Generator().manual_seed(1))
    out = model(x, t, text)
    assert (out[..., :2, :2] - out[..., 4:6, 4:6]).abs().max() > 1e-2
    assert model(torch.zeros(1, 16, 1, 12, 16), t[:, :1], text).shape == (1, 16, 1, 12, 16)
    with pytest.raises(ValueError, match="absolute position"):
        model.config.to_diffusers()
