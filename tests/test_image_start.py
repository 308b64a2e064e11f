"""Starting a stream from an image or a video (issue 16): encoders, image reading and the size rule,
`generate --image` and `generate --continue`."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from streamer.models.vae import StreamingWanDecoder, tiny_vae_config


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ---- encoders (model side) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wan_vae() -> AutoencoderKLWan:
    # a non-default normalisation, so an encoder that skipped or misapplied it is caught
    g = torch.Generator().manual_seed(1)
    mean = (torch.randn(16, generator=g) * 0.5).tolist()
    std = (torch.rand(16, generator=g) * 2 + 0.5).tolist()
    torch.manual_seed(0)
    return AutoencoderKLWan(**tiny_vae_config(), latents_mean=mean, latents_std=std).eval()


def test_wan_encode_normalises_like_diffusers_and_round_trips_through_the_streaming_decode(wan_vae):
    dec = StreamingWanDecoder(wan_vae)
    image = torch.rand(1, 3, 1, 32, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = dec.encode(image)
    assert z.shape == (1, 16, 1, 4, 6) and z.dtype == torch.float32
    with torch.no_grad():
        raw = wan_vae.encode(image).latent_dist.mode()
        mean = torch.tensor(wan_vae.config.latents_mean).view(1, 16, 1, 1, 1)
        std = torch.tensor(wan_vae.config.latents_std).view(1, 16, 1, 1, 1)
        torch.testing.assert_close(z, (raw - mean) / std, atol=1e-5, rtol=1e-5)
        # diffusers' own round trip of the image (encode, mode, decode) vs encode + our streaming decode
        reference = wan_vae.decode(raw).sample.clamp(-1, 1)
    video = dec.decode(z, dec.new_state())
    assert video.shape == image.shape
    torch.testing.assert_close(video, reference, atol=1e-4, rtol=0)


def test_wan_image_plus_chunks_gives_one_plus_4k_frames(wan_vae):
    """An encoded image + N chunks of 3 latent frames decodes to 1 + 12N frames, by the frame rule."""
    dec = StreamingWanDecoder(wan_vae)
    state = dec.new_state()
    z = dec.encode(torch.zeros(1, 3, 1, 16, 16))
    frames = dec.decode(z, state).shape[2]
    g = torch.Generator().manual_seed(4)
    for n in range(1, 3):
        frames += dec.decode(torch.randn(1, 16, 3, 2, 2, generator=g), state).shape[2]
        assert frames == dec.frames.video_frames(1 + 3 * n) == 1 + 12 * n


def test_wan_encode_takes_a_clip_and_refuses_wrong_frame_counts(wan_vae):
    dec = StreamingWanDecoder(wan_vae)
    assert dec.encode(torch.zeros(1, 3, 9, 16, 16)).shape == (1, 16, 3, 2, 2)
    with pytest.raises(ValueError, match="1\\+4k"):
        dec.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        dec.encode(torch.zeros(1, 3, 1, 12, 16))


def test_from_pretrained_keeps_the_encoder(wan_vae, tmp_path):
    wan_vae.save_pretrained(tmp_path / "vae")
    dec = StreamingWanDecoder.from_pretrained(tmp_path / "vae")
    x = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    torch.testing.assert_close(dec.encode(x), StreamingWanDecoder(wan_vae).encode(x))


def test_tiny_autoencoder_encode_is_its_normalised_encoder():
    from streamer.models.tiny_vae import TinyStreamingDecoder, TinyVAE

    torch.manual_seed(0)
    vae = TinyVAE().eval()
    vae.latent_mean.normal_()
    vae.latent_std.uniform_(0.5, 2.0)
    dec = TinyStreamingDecoder(vae)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    z = dec.encode(x)
    assert z.shape == (1, 16, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(z, (vae.encoder(x) - vae.latent_mean.view(1, -1, 1, 1, 1))
                                   / vae.latent_std.view(1, -1, 1, 1, 1))
        torch.testing.assert_close(dec.decode(z, dec.new_state()), vae.decode(z).clamp(-1, 1))
    with pytest.raises(ValueError, match="1\\+4k"):
        dec.encode(torch.zeros(1, 3, 2, 32, 32))
