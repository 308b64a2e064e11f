"""TAEHV (taew2_1.pth) as the streaming decoder: the public file's layout, strict loading, streaming
equal to a whole decode, per-stream state, the frame rule, and an independent reference.

Random weights stand in for the public file (no downloads here): saved with torch.save in its
layout (128 tensors; keys and shapes as madebyollin/taehv's taew2_1.pth, fp16 as published).
"""

import pytest
import torch
import torch.nn.functional as F

from streamer.models.errors import CheckpointError
from streamer.models.taehv import TAEHV, TAEHVConfig, TAEHVDecoder, is_taehv_file, load_taehv


def _taew2_1_layout() -> dict[str, tuple[int, ...]]:
    """taew2_1.pth's keys and shapes, written out from taehv.py's construction (widths 64 / 256, 128,
    64, 64; TPool strides 2, 2, 1; TGrow strides 1, 2, 2; only MemBlock convs and the first and last
    convs carry biases), independently of models/taehv.py."""
    shapes: dict[str, tuple[int, ...]] = {}

    def mem(prefix, c):
        for j, c_in in ((0, 2 * c), (2, c), (4, c)):
            shapes[f"{prefix}.conv.{j}.weight"], shapes[f"{prefix}.conv.{j}.bias"] = (c, c_in, 3, 3), (c,)

    shapes["encoder.0.weight"], shapes["encoder.0.bias"] = (64, 3, 3, 3), (64,)
    for base, pool in ((2, 2), (7, 2), (12, 1)):
        shapes[f"encoder.{base}.conv.weight"] = (64, 64 * pool, 1, 1)
        shapes[f"encoder.{base + 1}.weight"] = (64, 64, 3, 3)
        for i in range(base + 2, base + 5):
            mem(f"encoder.{i}", 64)
    shapes["encoder.17.weight"], shapes["encoder.17.bias"] = (16, 64, 3, 3), (16,)
    shapes["decoder.1.weight"], shapes["decoder.1.bias"] = (256, 16, 3, 3), (256,)
    for base, c, c_next, grow in ((3, 256, 128, 1), (9, 128, 64, 2), (15, 64, 64, 2)):
        for i in range(base, base + 3):
            mem(f"decoder.{i}", c)
        shapes[f"decoder.{base + 4}.conv.weight"] = (c * grow, c, 1, 1)
        shapes[f"decoder.{base + 5}.weight"] = (c_next, c, 3, 3)
    shapes["decoder.22.weight"], shapes["decoder.22.bias"] = (3, 64, 3, 3), (3,)
    return shapes


LAYOUT = _taew2_1_layout()


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in taew2_1's layout, scaled so activations stay O(1) through 23 layers."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in LAYOUT.items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        sd[k] = (torch.randn(shape, generator=g) * (1.2 / fan_in ** 0.5 if len(shape) == 4 else 0.1)).half()
    return sd


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return _random_state()


@pytest.fixture(scope="module")
def pth(state_dict, tmp_path_factory):
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="module")
def dec(pth) -> TAEHVDecoder:
    """In float64: equalities below hold to 1e-6 whatever conv algorithm a batch size picks (in
    float32, oneDNN rounds a 1-frame and a 5-frame batch differently, ~4e-5 after 23 layers)."""
    return TAEHVDecoder.from_file(pth, dtype=torch.float64)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 16, 5, 2, 3, generator=torch.Generator().manual_seed(1)) * 1.5


# ---- an independent reference: TAEHV's decode_video(parallel=True) on raw tensors ----------------
def reference_decode(sd: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
    """latents [B, 16, L, h, w] -> TAEHV's decode_video output in [0, 1], NTCHW [B, 4L - 3, 3, 8h, 8w],
    from taehv.py's definition with F.conv2d on the state dict: the whole time axis at once, each
    MemBlock's past its input shifted one frame (zeros first), TGrow splitting channels into frames,
    the first 3 frames trimmed."""
    w = {k: v.double() for k, v in sd.items()}
    b, _, t, h, wd = latents.shape
    x = latents.double().transpose(1, 2).reshape(b * t, 16, h, wd)

    def c3(x, name, bias=True):
        return F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"] if bias else None, padding=1)

    def memblock(x, name):
        xs = x.reshape(b, -1, *x.shape[1:])
        past = torch.cat([torch.zeros_like(xs[:, :1]), xs[:, :-1]], 1).reshape(x.shape)
        y = F.relu(c3(torch.cat([x, past], 1), f"{name}.conv.0"))
        y = F.relu(c3(y, f"{name}.conv.2"))
        return F.relu(c3(y, f"{name}.conv.4") + x)

    def tgrow(x, name):
        n, c, hh, ww = x.shape
        y = F.conv2d(x, w[f"{name}.conv.weight"])
        s = y.shape[1] // c
        return y.reshape(n, s, c, hh, ww).reshape(n * s, c, hh, ww)  # frame-major: frame 0 = channels [0:c]

    x = F.relu(c3(torch.tanh(x / 3) * 3, "decoder.1"))
    for base in (3, 9, 15):
        for i in range(base, base + 3):
            x = memblock(x, f"decoder.{i}")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = tgrow(x, f"decoder.{base + 4}")
        x = c3(x, f"decoder.{base + 5}", bias=False)
    x = c3(F.relu(x), "decoder.22")
    x = x.reshape(b, -1, *x.shape[1:]).clamp(0, 1)
    return x[:, 3:]


def to_ncthw(reference: torch.Tensor) -> torch.Tensor:
    """TAEHV's [0, 1] NTCHW -> the decoder interface's [-1, 1] NCTHW."""
    return (reference * 2 - 1).transpose(1, 2).float()


def stream(dec, latents, splits, state=None):
    state = dec.new_state() if state is None else state
    outs, start = [], 0
    for n in splits:
        out = dec.decode(latents[:, :, start : start + n], state)
        assert out.shape[2] == dec.frames.video_frames(n, first=start == 0) == 4 * n - (3 if start == 0 else 0)
        outs.append(out)
        start += n
    return torch.cat(outs, 2)


# ---- tests ------------------------------------------------------------------------------------
def test_module_has_taew2_1s_exact_layout():
    sd = TAEHV().state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == LAYOUT
    assert len(sd) == 128
    n_dec = sum(v.numel() for k, v in sd.items() if k.startswith("decoder."))
    assert 9.7e6 < n_dec < 9.9e6  # "about 9.8M" decoder parameters


def test_pth_round_trip_loads_strictly(pth, state_dict):
    model = load_taehv(pth)
    assert model.config == TAEHVConfig()
    loaded = model.state_dict()
    assert set(loaded) == set(state_dict)
    for k, v in state_dict.items():
        assert torch.equal(loaded[k], v.float()), k
    assert is_taehv_file(pth)


def test_safetensors_round_trip(state_dict, tmp_path, latents, dec):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"  # no "tae" in the name: detected by its keys
    save_file(state_dict, str(path))
    assert is_taehv_file(path)
    other = TAEHVDecoder.from_file(path, dtype=torch.float64)
    torch.testing.assert_close(other.decode(latents, other.new_state()), dec.decode(latents, dec.new_state()),
                               atol=0, rtol=0)


def test_whole_and_streamed_decode_match_reference(pth, state_dict, latents):
    """In float64 (the reference's precision), so any difference is a wrong op, not rounding."""
    dec = TAEHVDecoder.from_file(pth, dtype=torch.float64)
    video = dec.decode(latents, dec.new_state())
    ref = to_ncthw(reference_decode(state_dict, latents))
    assert video.shape == ref.shape == (1, 3, 17, 16, 24)
    torch.testing.assert_close(video, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(stream(dec, latents, [1, 2, 2]), ref, atol=1e-6, rtol=0)
    assert 0.05 < video.std() and video.min() >= -1 and video.max() <= 1  # not a constant or saturated picture


@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1], [2, 3], [1, 4], [3, 2]])
def test_streaming_in_chunks_equals_whole_decode(dec, latents, splits):
    whole = dec.decode(latents, dec.new_state())
    torch.testing.assert_close(stream(dec, latents, splits), whole, atol=1e-6, rtol=0)


def test_float32_streaming_is_close_to_whole(pth, latents):
    dec = TAEHVDecoder.from_file(pth)
    assert dec.dtype == torch.float32
    torch.testing.assert_close(stream(dec, latents, [1, 2, 2]), dec.decode(latents, dec.new_state()),
                               atol=2e-4, rtol=0)


def test_pass_frames_does_not_change_frames(pth, dec, latents):
    small = TAEHVDecoder(dec.taehv, pass_frames=1)
    torch.testing.assert_close(stream(small, latents, [2, 3]), dec.decode(latents, dec.new_state()),
                               atol=1e-6, rtol=0)


def test_interleaved_streams_keep_their_own_state(dec, latents):
    other = torch.flip(latents, dims=[2]) * -0.7
    a, b = dec.new_state(), dec.new_state()
    outs_a, outs_b, start = [], [], 0
    for n in [1, 2, 2]:
        outs_a.append(dec.decode(latents[:, :, start : start + n], a))
        outs_b.append(dec.decode(other[:, :, start : start + n], b))
        start += n
    torch.testing.assert_close(torch.cat(outs_a, 2), dec.decode(latents, dec.new_state()), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(outs_b, 2), dec.decode(other, dec.new_state()), atol=1e-6, rtol=0)
    assert (torch.cat(outs_a, 2) - torch.cat(outs_b, 2)).abs().max() > 0.1


@pytest.mark.parametrize("latent_frames", [1, 2, 3, 6])
def test_frame_rule_1_plus_4k(dec, latent_frames):
    z = torch.randn(2, 16, latent_frames, 2, 2)
    video = dec.decode(z, dec.new_state())
    assert video.shape == (2, 3, 1 + 4 * (latent_frames - 1), 16, 16)
    assert dec.frames.video_frames(latent_frames) == video.shape[2]
    assert dec.spatial_stride == 8 and dec.frames.temporal_stride == 4


def test_first_frames_trimmed_as_taehv_does(dec, latents):
    """The frames kept are the last 4L - 3 of the 4L the network makes (TAEHV's frames_to_trim = 3)."""
    raw = dec.taehv.decode_frames(latents.double().transpose(1, 2), {})
    video = dec.decode(latents, dec.new_state())
    torch.testing.assert_close(video, raw[:, 3:].transpose(1, 2).float() * 2 - 1, atol=0, rtol=0)


def test_encode_shapes_and_padding(dec):
    """1 + 4k frames -> 1 + k latents; the clip is padded at the end with its last frame (TAEHV's rule)."""
    g = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 5, 16, 24, generator=g) * 2 - 1
    z = dec.encode(video)
    assert z.shape == (1, 16, 2, 2, 3) and z.dtype == torch.float32
    padded = torch.cat([video, video[:, :, -1:].expand(-1, -1, 3, -1, -1)], 2)
    direct = dec.taehv.encode_frames(((padded.double() + 1) / 2).transpose(1, 2)).transpose(1, 2).float()
    torch.testing.assert_close(z, direct, atol=0, rtol=0)
    with pytest.raises(ValueError, match="1\\+4k"):
        dec.encode(torch.zeros(1, 3, 4, 16, 16))


def test_disabled_time_upscale_takes_last_timestep_channels(pth, state_dict):
    """TAEHV's cheaper preview: TGrow strides cut to 1 keep each file TGrow's last-timestep channels."""
    model = load_taehv(pth, decoder_time_upscale=(False, False))
    assert model.config.t_upscale == 1
    for i, c in ((13, 128), (19, 64)):
        assert torch.equal(model.state_dict()[f"decoder.{i}.conv.weight"], state_dict[f"decoder.{i}.conv.weight"][-c:].float())
    d = TAEHVDecoder(model)
    assert d.decode(torch.zeros(1, 16, 3, 2, 2), d.new_state()).shape == (1, 3, 3, 16, 16)
    with pytest.raises(CheckpointError, match="decoder_time_upscale"):
        load_taehv(pth, decoder_time_upscale=(True, True, True))


def _one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_taehv(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_wrong_files_give_one_line_errors(tmp_path, state_dict):
    torch.save({"decoder.conv_in.weight": torch.zeros(1)}, tmp_path / "wan_vae.pth")
    msg = _one_line_error(tmp_path / "wan_vae.pth")
    assert "is not a TAEHV checkpoint" in msg and "128 missing keys" in msg and "1 unexpected keys" in msg
    bad = dict(state_dict)
    bad["decoder.3.conv.0.weight"] = torch.zeros(256, 256, 3, 3)
    del bad["encoder.17.bias"]
    torch.save(bad, tmp_path / "taew_bad.pth")
    msg = _one_line_error(tmp_path / "taew_bad.pth")
    assert "1 missing keys (e.g. encoder.17.bias)" in msg and "decoder.3.conv.0.weight (256, 256, 3, 3) vs (256, 512, 3, 3)" in msg
    (tmp_path / "taew2_1.pth").write_bytes(b"not a checkpoint")
    assert "not a checkpoint" in _one_line_error(tmp_path / "taew2_1.pth")
    nan = dict(state_dict)
    nan["decoder.1.bias"] = torch.full((256,), float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    assert "non-finite" in _one_line_error(tmp_path / "nan.pth")


def test_decode_refuses_bad_latents(dec):
    with pytest.raises(ValueError, match="expected latents"):
        dec.decode(torch.zeros(1, 8, 1, 2, 2), dec.new_state())
    state = dec.new_state()
    dec.decode(torch.zeros(1, 16, 1, 2, 2), state)
    with pytest.raises(ValueError, match="do not continue this stream"):
        dec.decode(torch.zeros(1, 16, 1, 3, 3), state)


def test_pipeline_and_cli_take_a_taehv_file_as_vae(pth, tmp_path):
    from streamer.pipeline import Pipeline
    from streamer.session import Session

    pipe = Pipeline.load(preset="tiny", vae=pth, device="cpu", dtype=torch.float32)
    assert isinstance(pipe.decoder, TAEHVDecoder) and "TAEHV" in pipe.description
    session = Session(pipe, "a cat", pipe.stream_config(size=(64, 48), chunk_frames=2))
    first, second = session.step(), session.step()
    assert first.frames.shape == (5, 48, 64, 3) and second.frames.shape == (8, 48, 64, 3)
    timing = Pipeline.load(preset="tiny", decoder="taehv", device="cpu", dtype=torch.float32)
    assert isinstance(timing.decoder, TAEHVDecoder) and "random TAEHV" in timing.description


def test_cli_generates_with_taehv_and_refuses_a_wrong_file(pth, tmp_path, capsys):
    import av

    from streamer.cli import main

    out = tmp_path / "taehv.mp4"
    code = main(["generate", "--prompt", "a cat", "--frames", "9", "--size", "64x48", "--chunk", "1", "--quiet",
                 "--out", str(out), "--vae", str(pth), "--device", "cpu", "--dtype", "fp32"])
    err = capsys.readouterr().err
    assert code == 0 and "TAEHV tiny decoder" in err, err
    with av.open(str(out)) as f:
        assert sum(1 for _ in f.decode(video=0)) == 9
    torch.save({"decoder.1.weight": torch.zeros(256, 16, 3, 3)}, tmp_path / "taew_partial.pth")
    code = main(["generate", "--prompt", "a cat", "--frames", "9", "--out", str(tmp_path / "x.mp4"),
                 "--vae", str(tmp_path / "taew_partial.pth"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert "is not a TAEHV checkpoint" in err and "127 missing keys" in err
