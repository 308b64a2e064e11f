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


# ---- reading images and the size rule -------------------------------------------------------------
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: reading its size
    is cheap, decoding it would fail (so a size refusal proves nothing was decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def test_size_rule_covers_then_centre_crops_for_pixels_and_points(tmp_path):
    from PIL import Image

    from streamer.images import fit_points, load_image

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)  # 2:1 into 1:1 at scale 1: the middle half
    Image.fromarray(wide).save(tmp_path / "wide.png")
    got = load_image(tmp_path / "wide.png", 128, 128)
    np.testing.assert_array_equal(got.pixels, wide[:, 64:192])
    assert got.source_size == (256, 128) and any("centre-cropped" in n for n in got.notes)
    # tall 100x300 into 200x100: scaled x2 to cover the width (200x600), the middle 100 rows kept
    tall = np.zeros((300, 100, 3), np.uint8)
    tall[148:152, 60:64] = 255  # a white dot around (62, 150) in the picture
    Image.fromarray(tall).save(tmp_path / "tall.png")
    fitted = load_image(tmp_path / "tall.png", 200, 100).pixels
    assert fitted.shape == (100, 200, 3)
    ys, xs = np.nonzero(fitted.sum(-1) > 300)
    x, y = xs.mean() + 0.5, ys.mean() + 0.5  # the dot's centre in continuous pixel coordinates
    px, py = fit_points(np.array([62.0, 150.0]), 100, 300, 200, 100)
    assert abs(px - x) <= 0.5 and abs(py - y) <= 0.5, ((px, py), (x, y))


@pytest.mark.parametrize("mode, note", [("RGBA", "alpha"), ("LA", "grayscale with alpha"), ("L", "grayscale"),
                                        ("I;16", "grayscale")])
def test_alpha_and_grayscale_are_converted_and_said(tmp_path, mode, note):
    from PIL import Image

    from streamer.images import load_image

    rng = np.random.default_rng(1)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (32, 32, len(mode)), dtype=np.uint8).squeeze(-1)
                              if len(mode) == 1 else rng.integers(0, 256, (32, 32, len(mode)), dtype=np.uint8), mode)
    img.save(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png", 32, 32)
    assert got.pixels.shape == (32, 32, 3) and got.pixels.dtype == np.uint8
    assert [n for n in got.notes if note in n and "converted to RGB" in n], got.notes
    if mode == "RGBA":  # composited over black: a transparent pixel is black, an opaque one keeps its colour
        a = np.asarray(img)
        np.testing.assert_allclose(got.pixels, np.round(a[..., :3] * (a[..., 3:] / 255.0)), atol=1)


def test_bad_images_are_refused_in_one_line(tmp_path):
    from PIL import Image

    from streamer.errors import InputError
    from streamer.images import load_image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    cases = {
        png_header_only(tmp_path / "huge.png", 20000, 20000): "20000|400000000 pixels",
        png_header_only(tmp_path / "long.png", 17000, 10): "17000x10",
        png_header_only(tmp_path / "zero.png", 0, 0): "zero size",
        tmp_path / "empty.png": "empty file",
        tmp_path / "junk.webp": "not an image",
        tmp_path / "cut.jpg": "corrupt or truncated",
        tmp_path / "missing.png": "no such file",
        tmp_path: "folder",
    }
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.webp").write_bytes(b"RIFF....WEBPnot really" * 5)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as e:
            load_image(path, 128, 128)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


# ---- generate --image / --continue on the default model ---------------------------------------------
from streamer.pipeline import WEIGHTS_DIR  # noqa: E402

needs_weights = pytest.mark.skipif(not (WEIGHTS_DIR / "dit.safetensors").is_file(), reason="no shipped weights")
PROMPT = "a green diamond on a night background"


@pytest.fixture(scope="module")
def world_clip():
    from streamer.world.scenes import World

    clip = World().clip(3, 9)
    assert clip.prompt == PROMPT
    return clip


def write_mp4(path: Path, frames: np.ndarray, fps: float = 16.0) -> Path:
    from streamer.video import Mp4Writer

    with Mp4Writer(path, fps=fps, width=frames.shape[2], height=frames.shape[1]) as w:
        w.write(frames)
    return path


def read_mp4(path: Path) -> np.ndarray:
    from streamer.images import read_video

    return np.stack(list(read_video(path)))


@needs_weights
def test_generate_image_first_frame_is_the_image(tmp_path, capsys, world_clip):
    """Issue 16's measure: the first output frame (read back from the mp4) against the autoencoder's
    own round trip of the image, PSNR >= 35 dB; in memory the two are equal."""
    from PIL import Image

    from streamer.cli import main
    from streamer.images import encode_frames, load_image
    from streamer.models.frames import video_to_uint8
    from streamer.pipeline import Pipeline
    from streamer.session import Session

    Image.fromarray(world_clip.frames[0]).save(tmp_path / "start.png")
    world_clip.trajectory.save(tmp_path / "t.json")
    out = tmp_path / "img.mp4"
    assert main(["generate", "--prompt", PROMPT, "--image", str(tmp_path / "start.png"), "--tracks",
                 str(tmp_path / "t.json"), "--frames", "13", "--out", str(out), "--quiet"]) == 0
    video = read_mp4(out)
    assert video.shape == (13, 128, 128, 3)  # an image + 1 chunk of 3 latent frames = 1 + 12 frames
    # hidden chunks never hide an image start: the same video, and a note says the flag did nothing
    capsys.readouterr()
    assert main(["generate", "--prompt", PROMPT, "--image", str(tmp_path / "start.png"), "--tracks",
                 str(tmp_path / "t.json"), "--frames", "13", "--hidden-chunks", "2", "--out", str(tmp_path / "h.mp4"),
                 "--quiet"]) == 0
    assert "--hidden-chunks 2 applies to streams from noise" in capsys.readouterr().err
    np.testing.assert_array_equal(read_mp4(tmp_path / "h.mp4"), video)

    pipe = Pipeline.load()
    image = load_image(tmp_path / "start.png", 128, 128).pixels
    z = encode_frames(pipe, image[None])
    round_trip = video_to_uint8(pipe.decoder.decode(z, pipe.decoder.new_state()))[0, 0]
    assert psnr(video[0], round_trip) >= 35.0, psnr(video[0], round_trip)
    first = Session(pipe, PROMPT, pipe.stream_config(), start_latents=z).step()
    assert first.frames.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(first.frames[0], round_trip)


@needs_weights
def test_generate_continue_writes_the_original_then_new_frames(tmp_path, capsys, world_clip):
    from streamer.cli import main

    clip = write_mp4(tmp_path / "clip.mp4", world_clip.frames)
    original = read_mp4(clip)
    out = tmp_path / "longer.mp4"
    assert main(["generate", "--prompt", PROMPT, "--continue", str(clip), "--frames", "8", "--out", str(out),
                 "--quiet"]) == 0
    video = read_mp4(out)
    assert len(video) == len(original) + 8 == 17
    # the original part, decoded and re-encoded by the mp4 codec only
    assert psnr(video[:9], original) >= 35.0, psnr(video[:9], original)
    assert "continuing 9 frames" in capsys.readouterr().err


@needs_weights
def test_continue_fits_a_video_of_another_size_by_the_size_rule(tmp_path, capsys):
    """A 120x120 video (not a size the model streams) continued at --size 128x128: its frames are
    resized to cover and centre-cropped, in the output and in what is encoded, as --image does."""
    from streamer.cli import main
    from streamer.images import fit_frames

    y, x = np.mgrid[0:120, 0:120]
    picture = np.stack([x * 2, y * 2, np.full_like(x, 90)], -1).astype(np.uint8)  # smooth: H.264 keeps it
    frames = np.repeat(picture[None], 5, 0)
    clip = write_mp4(tmp_path / "clip.mp4", frames)
    out = tmp_path / "longer.mp4"
    assert main(["generate", "--prompt", PROMPT, "--continue", str(clip), "--size", "128x128", "--frames", "4",
                 "--out", str(out), "--quiet"]) == 0
    assert "is 120x120: its frames are resized to cover 128x128 and centre-cropped" in capsys.readouterr().err
    video = read_mp4(out)
    assert video.shape == (9, 128, 128, 3)
    assert psnr(video[:5], fit_frames(read_mp4(clip), 128, 128)) >= 30.0


def test_continue_refuses_no_video_stream_and_a_size_it_cannot_stream_in_one_line(tmp_path, capsys):
    import wave

    from streamer.cli import main

    with wave.open(str(tmp_path / "sound.wav"), "wb") as w:  # a file FFmpeg reads, holding audio only
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    clip = write_mp4(tmp_path / "clip.mp4", np.zeros((5, 64, 96, 3), np.uint8))
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 1000)
    data = clip.read_bytes()  # a fragmented mp4 cut before its first fragment: a header, no frame
    (tmp_path / "head.mp4").write_bytes(data[: data.find(b"moof") - 4])
    cases = [(["--continue", str(tmp_path / "head.mp4")], "has no decodable video frame"),(["--continue", str(tmp_path / "sound.wav")], "has no video stream"),
             (["--continue", str(write_mp4(tmp_path / "odd.mp4", np.zeros((5, 100, 60, 3), np.uint8)))],
              "video size 60x100 is not possible: width and height must be positive multiples of 16 (VAE stride "
              "8 x patch 2), e.g. 48x96; give --size"),
             (["--continue", str(tmp_path / "bad.mp4")], "not a video FFmpeg can read"),
             (["--continue", str(clip), "--image", str(clip)], "not allowed with"),
             (["--continue", str(clip), "--tracks", str(clip), "--loop-tracks"], "--loop-tracks cannot"),
             (["--image", str(tmp_path / "sound.wav")], "not an image"),
             (["--image", str(png_header_only(tmp_path / "huge.png", 20000, 20000))], "400000000 pixels")]
    for args, message in cases:
        code = main(["generate", "--prompt", "p", "--out", str(tmp_path / "o.mp4"), "--quiet", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
        assert not (tmp_path / "o.mp4").exists()


def test_tracks_drawn_on_the_picture_follow_it_and_continued_tracks_start_at_the_last_frame(tmp_path, capsys):
    """Tracks whose frame is the picture's own are cut with it by the size rule; with --continue the
    tracks' frame 0 is the continued video's last frame (invisible before it)."""
    from types import SimpleNamespace

    from PIL import Image

    from streamer.cli import _start_image, _tracks_from_last_frame
    from streamer.images import read_image
    from streamer.trajectory import Trajectory

    Image.fromarray(np.zeros((300, 100, 3), np.uint8)).save(tmp_path / "tall.png")
    picture = read_image(tmp_path / "tall.png")
    pipe = SimpleNamespace(device=torch.device("cpu"),
                           decoder=SimpleNamespace(encode=lambda v: torch.zeros(1, 16, 1, v.shape[3] // 8, v.shape[4] // 8)))
    config = SimpleNamespace(width=200, height=100)
    on_picture = Trajectory(np.array([[[62.0, 150.0]], [[50.0, 140.0]]]), np.ones((2, 1), bool), 16, 100, 300)
    z, traj = _start_image(picture, pipe, config, on_picture)
    assert z.shape == (1, 16, 1, 12, 25) and (traj.width, traj.height) == (200, 100)
    np.testing.assert_allclose(traj.tracks[:, 0], [[124.0, 50.0], [100.0, 30.0]])  # x2, 250 rows cut above
    assert "mapped with it" in capsys.readouterr().err
    at_video_size = Trajectory(np.array([[[10.0, 20.0]]]), np.ones((1, 1), bool), 16, 200, 100)
    assert _start_image(picture, pipe, config, at_video_size)[1] is at_video_size

    later = _tracks_from_last_frame(on_picture, 9)  # 9 re-encoded frames: the last is the tracks' frame 0
    assert later.num_frames == 10 and not later.visible[:8].any() and later.visible[8:].all()
    np.testing.assert_array_equal(later.tracks[8:], on_picture.tracks)


def test_browser_start_image_and_current_frame_begin_the_next_stream(tmp_path):
    """The page's "Start image" upload and "Start from the current frame" give the next stream its
    first frame: the picture (by the size rule) through the model's own VAE round trip."""
    from PIL import Image

    from streamer.images import encode_frames, load_image
    from streamer.models.frames import video_to_uint8
    from streamer.ui.app import App

    app = App({"tiny": {"preset": "tiny", "device": "cpu"}}, size=(64, 64))
    try:
        sched = app.placer.schedulers[0]
        live = app.live("page")
        assert "sc-error" in app.start_from_current("page")  # nothing made yet
        picture = np.random.default_rng(2).integers(0, 256, (48, 96, 4), dtype=np.uint8)
        Image.fromarray(picture, "RGBA").save(tmp_path / "start.png")
        shown, note = app.set_start_image("page", str(tmp_path / "start.png"))
        assert "sc-note" in note and "alpha" in note and str(tmp_path) not in note
        np.testing.assert_array_equal(shown, load_image(tmp_path / "start.png", 64, 64).pixels)  # drawn over
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a png")
        assert "sc-error" in (msg := app.set_start_image("page", str(bad))[1]) and str(tmp_path) not in msg
        cfg = dict(chunk_frames=3, policy="window", policy_args={}, seed=0)
        sched.call(app._open, live, "tiny", "a cat", cfg)
        first = sched.call(app._step, live, live.session).frames
        pipe = live.pipe
        z = encode_frames(pipe, load_image(tmp_path / "start.png", 64, 64).pixels[None])
        expected = video_to_uint8(pipe.decoder.decode(z, pipe.decoder.new_state()))[0]
        assert first.shape == (1, 64, 64, 3) and np.array_equal(first, expected)
        assert live.begun_latents == 1  # the start's one latent frame, not a chunk
        second = sched.call(app._step, live, live.session).frames
        assert len(second) == 12 and live.begun_latents == 4
        # "start from the current frame": the newest frame made begins the next stream
        assert "sc-note" in app.start_from_current("page")
        sched.call(app._open, live, "tiny", "a cat", cfg)
        again = sched.call(app._step, live, live.session).frames
        z = encode_frames(pipe, second[-1:])
        np.testing.assert_array_equal(again, video_to_uint8(pipe.decoder.decode(z, pipe.decoder.new_state()))[0])
        assert "cleared" in app.set_start_image("page", None)[1] and live.start_image is None
    finally:
        app.lives.pop("page").close()
        app.placer.close()
