import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from streamer.models.vae import StreamingWanDecoder, VAELoadError, tiny_vae_config, video_to_uint8


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    # Non-default normalisation, so a decoder that ignored or misapplied it would be caught.
    g = torch.Generator().manual_seed(1)
    mean = (torch.randn(16, generator=g) * 0.5).tolist()
    std = (torch.rand(16, generator=g) * 2 + 0.5).tolist()
    return AutoencoderKLWan(**tiny_vae_config(), latents_mean=mean, latents_std=std).eval()


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 16, 7, 4, 4, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def reference(vae, latents) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        return vae.decode(latents * std + mean).sample


def stream(dec: StreamingWanDecoder, latents: torch.Tensor, splits: list[int], state=None) -> torch.Tensor:
    assert sum(splits) == latents.shape[2]
    state = dec.new_state() if state is None else state
    outs, start = [], 0
    for n in splits:
        out = dec.decode(latents[:, :, start : start + n], state)
        assert out.shape[2] == 4 * n - (3 if start == 0 else 0) == dec.frames.video_frames(n, first=start == 0)
        outs.append(out)
        start += n
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("splits", [[1, 3, 3], [2, 3, 2], [7]])
def test_streaming_matches_full_decode(vae, latents, reference, splits):
    dec = StreamingWanDecoder(vae)
    video = stream(dec, latents, splits)
    assert video.shape == (1, 3, 1 + 4 * 6, 32, 32) == reference.shape
    torch.testing.assert_close(video, reference, atol=1e-5, rtol=0)
    assert video.abs().max() <= 1.0


def test_interleaved_streams_keep_their_own_state(vae, latents, reference):
    """Two streams on one decoder, chunk by chunk in turn, each equal the full decode: the decoder
    holds weights only, each stream's causal cache lives in its own state."""
    dec = StreamingWanDecoder(vae)
    other = torch.flip(latents, dims=[2])
    a, b = dec.new_state(), dec.new_state()
    outs_a, outs_b, start = [], [], 0
    for n in [1, 3, 3]:
        outs_a.append(dec.decode(latents[:, :, start : start + n], a))
        outs_b.append(dec.decode(other[:, :, start : start + n], b))
        start += n
    torch.testing.assert_close(torch.cat(outs_a, 2), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(outs_b, 2), stream(dec, other, [7]), atol=0, rtol=0)


def test_from_pretrained_folder_and_pipeline_layout(vae, latents, reference, tmp_path):
    vae.save_pretrained(tmp_path / "vae_only")
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    for path in (tmp_path / "vae_only", tmp_path / "pipe"):
        dec = StreamingWanDecoder.from_pretrained(path)
        torch.testing.assert_close(stream(dec, latents, [1, 6]), reference, atol=1e-5, rtol=0)


def test_bad_paths_raise_clear_errors(tmp_path):
    with pytest.raises(VAELoadError, match="no VAE at"):
        StreamingWanDecoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(VAELoadError, match="neither"):
        StreamingWanDecoder.from_pretrained(tmp_path)
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(VAELoadError, match="not a Wan2.1 VAE"):
        StreamingWanDecoder.from_pretrained(tmp_path / "bad.pth")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown VAE file type"):
        StreamingWanDecoder.from_pretrained(tmp_path / "notes.txt")


def test_wrong_latent_shape_is_refused(vae):
    with pytest.raises(ValueError, match="expected latents"):
        dec = StreamingWanDecoder(vae)
        dec.decode(torch.zeros(1, 8, 1, 4, 4), dec.new_state())


def test_random_tiny_is_seeded_and_strides():
    a, b = StreamingWanDecoder.random_tiny(seed=3), StreamingWanDecoder.random_tiny(seed=3)
    assert (a.spatial_stride, a.frames.temporal_stride) == (8, 4)
    z = torch.randn(1, 16, 2, 2, 2)
    torch.testing.assert_close(a.decode(z, a.new_state()), b.decode(z, b.new_state()), atol=0, rtol=0)


def test_video_to_uint8():
    video = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 1, 1, 4).expand(2, 3, 5, 1, 4)
    frames = video_to_uint8(video)
    assert frames.shape == (2, 5, 1, 4, 3) and frames.dtype == np.uint8
    assert frames[0, 0, 0, :, 0].tolist() == [0, 128, 255, 191]
