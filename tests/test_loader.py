"""Checkpoint loading: every released format, and a clear CheckpointError for every user mistake."""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import replace

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from streamer.models.loader import CheckpointError, infer_config, load_checkpoint, load_model, load_state_dict
from streamer.models.wan import CausalWanModel, WanConfig, count_parameters, get_config

TINY = get_config("tiny")
# Shapes do not tell the head count; inference assumes Wan's 128-dim heads, which tiny (32) lacks.
WIDE = WanConfig(dim=256, num_layers=2, num_heads=2, ffn_dim=64, freq_dim=32, text_dim=32)

State = dict[str, torch.Tensor]


def randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():  # default inits leave norms at 1 and biases at 0, which would hide swaps
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def random_state(cfg: WanConfig, seed: int = 0) -> State:
    model = CausalWanModel(cfg)
    randomize(model, seed)
    return model.state_dict()


def random_diffusers(cfg: WanConfig) -> WanTransformer3DModel:
    model = WanTransformer3DModel(**cfg.to_diffusers())
    randomize(model, 0)
    return model.eval()


def to_original(state: State) -> State:
    """Diffusers names -> original Wan / Self-Forcing names, written out by hand (not by inverting
    diffusers' table) so that a round trip tests diffusers' converter instead of restating it."""
    renames = [
        (r"^condition_embedder\.time_embedder\.linear_([12])\.", lambda m: f"time_embedding.{2 * int(m[1]) - 2}."),
        (r"^condition_embedder\.text_embedder\.linear_([12])\.", lambda m: f"text_embedding.{2 * int(m[1]) - 2}."),
        (r"^condition_embedder\.time_proj\.", "time_projection.1."),
        (r"^proj_out\.", "head.head."),
        (r"^scale_shift_table$", "head.modulation"),
        (r"\.scale_shift_table$", ".modulation"),
        (r"\.attn1\.", ".self_attn."),
        (r"\.attn2\.", ".cross_attn."),
        (r"\.to_([qkv])\.", r".\1."),
        (r"\.to_out\.0\.", ".o."),
        (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
        (r"\.ffn\.net\.2\.", ".ffn.2."),
        (r"\.norm2\.", ".norm3."),  # Wan's cross-attention norm is norm3; diffusers calls it norm2
    ]
    out = {}
    for key, value in state.items():
        for pattern, new in renames:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def assert_same(actual: State, expected: State) -> None:
    assert actual.keys() == expected.keys()
    for k in expected:
        assert torch.equal(actual[k], expected[k]), k


def assert_outputs_match(model: CausalWanModel, reference: WanTransformer3DModel) -> None:
    torch.manual_seed(1)
    x, text = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 16, 32)
    with torch.no_grad():
        ours = model(x, torch.full((1, 3), 700.0), text)
        # diffusers' transformer takes the embedding as given; Wan's pipeline zero-pads it to text_len
        # first, which our model does itself
        padded = torch.nn.functional.pad(text, (0, 0, 0, model.config.text_len - text.shape[1]))
        ref = reference(x, torch.tensor([700.0]), padded, return_dict=False)[0]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def load_error(path, model: torch.nn.Module | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        if model is None:
            load_model(path)
        else:
            load_checkpoint(model, path)
    return str(info.value)


# ---- diffusers folders ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["single", "sharded", "pipeline", "bin"])
def test_diffusers_folder(tmp_path, layout):
    reference = random_diffusers(TINY)
    folder = tmp_path / "transformer" if layout == "pipeline" else tmp_path
    reference.save_pretrained(
        folder, max_shard_size="100KB" if layout == "sharded" else "10GB", safe_serialization=layout != "bin"
    )
    if layout == "sharded":
        assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_model(tmp_path)
    assert model.config == replace(TINY, text_len=512)  # text_len is the pipeline's, not in config.json
    assert_outputs_match(model, reference)


def test_load_model_dtype(tmp_path):
    reference = random_diffusers(TINY)
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(p.requires_grad for p in model.parameters())


# ---- single files -----------------------------------------------------------------------------
@pytest.mark.parametrize("names", ["diffusers", "original"])
def test_single_safetensors(tmp_path, names):
    source = random_state(WIDE)
    save_file(to_original(source) if names == "original" else source, tmp_path / "w.safetensors")
    state, config = load_state_dict(tmp_path / "w.safetensors")
    assert config is None
    assert_same(state, source)
    model = load_model(tmp_path / "w.safetensors")
    assert model.config == WIDE
    assert_same(model.state_dict(), source)


def test_original_names_look_like_wan():
    original = to_original(random_state(TINY))
    expected = {"blocks.0.norm3.weight", "blocks.1.cross_attn.o.bias", "blocks.0.self_attn.norm_k.weight",
                "blocks.0.ffn.2.weight", "blocks.0.modulation", "time_embedding.2.bias", "text_embedding.0.weight",
                "time_projection.1.weight", "head.head.weight", "head.modulation", "patch_embedding.weight"}
    assert expected <= original.keys()
    assert not any(".norm2." in k for k in original)


@pytest.mark.parametrize("style", ["self_forcing", "causvid", "fsdp_blocks", "lightning", "state_dict", "bare"])
def test_training_pickles(tmp_path, style):
    ema, online = random_state(TINY, seed=0), random_state(TINY, seed=1)
    orig = to_original(ema)
    per_block_wrappers = "_fsdp_wrapped_module._checkpoint_wrapped_module"
    payload = {
        # Self-Forcing: EMA and online generator, keys under its wrapper's `model` and FSDP
        "self_forcing": {"generator_ema": {f"model._fsdp_wrapped_module.{k}": v for k, v in orig.items()},
                         "generator": {f"model.{k}": v for k, v in to_original(online).items()}},
        "causvid": {"generator": {f"model.{k}": v for k, v in orig.items()}, "step": 600},
        # per-block FSDP plus activation checkpointing wrap inside the key, not only before it
        "fsdp_blocks": {"generator_ema": {
            "model._fsdp_wrapped_module." + re.sub(r"^(blocks\.\d+)\.", rf"\1.{per_block_wrappers}.", k): v
            for k, v in orig.items()}},
        "lightning": {"state_dict": {f"model.diffusion_model.{k}": v for k, v in orig.items()}, "epoch": 3},
        "state_dict": {"state_dict": {f"module._orig_mod.{k}": v for k, v in ema.items()}},
        "bare": orig,
    }[style]
    torch.save(payload, tmp_path / "ckpt.pt")
    model = CausalWanModel(TINY)
    load_checkpoint(model, tmp_path / "ckpt.pt")
    assert_same(model.state_dict(), ema)


def test_load_checkpoint_casts_to_model(tmp_path):
    source = random_state(TINY)
    save_file(source, tmp_path / "w.safetensors")
    model = CausalWanModel(TINY).to(torch.bfloat16)
    load_checkpoint(model, tmp_path / "w.safetensors")
    assert_same(model.state_dict(), {k: v.to(torch.bfloat16) for k, v in source.items()})


# ---- errors -----------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    assert "no such file" in load_error(tmp_path / "nope.pt")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_truncated(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(random_state(TINY), full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    message = load_error(cut)
    assert str(cut) in message and "truncated or corrupt" in message


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pth"])
@pytest.mark.parametrize("content", [b"hello, this is a README\n" * 20, bytes(range(256)) * 4, b""])
def test_not_a_checkpoint(tmp_path, suffix, content):
    path = tmp_path / f"notes{suffix}"
    path.write_bytes(content)
    message = load_error(path)
    assert str(path) in message and "not a checkpoint" in message


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > marker",))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_pickle_with_code_is_refused(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as f:
        pickle.dump({"generator": {"patch_embedding.weight": Exploit()}}, f, protocol=protocol)
    message = load_error(tmp_path / "evil.pt")
    assert "refusing to load a pickle" in message and "safetensors" in message
    assert not (tmp_path / "marker").exists()


def test_pickle_without_tensors(tmp_path):
    torch.save({"step": 1000, "optimizer": {"lr": 1e-5}}, tmp_path / "opt.pt")
    message = load_error(tmp_path / "opt.pt")
    assert "holds no tensors" in message and "optimizer" in message


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "holds no diffusers weights" in load_error(tmp_path)


def test_not_a_wan_checkpoint(tmp_path):
    save_file({"conv_in.weight": torch.zeros(4, 4)}, tmp_path / "unet.safetensors")
    assert "not a Wan transformer checkpoint" in load_error(tmp_path / "unet.safetensors")


def test_mismatches_listed_together(tmp_path):
    state = random_state(TINY)
    state["blocks.0.attn1.to_q.weight"] = torch.zeros(32, 64)
    state["blocks.1.lora_A.weight"] = torch.zeros(4, 64)
    del state["proj_out.bias"]
    save_file(state, tmp_path / "w.safetensors")
    message = load_error(tmp_path / "w.safetensors", CausalWanModel(TINY))
    assert "1 missing keys:\n  proj_out.bias" in message
    assert "1 unexpected keys:\n  blocks.1.lora_A.weight" in message
    assert "blocks.0.attn1.to_q.weight: checkpoint (32, 64) vs model (64, 64)" in message


def test_long_lists_are_capped(tmp_path):
    state = {k: v for k, v in random_state(TINY).items() if not k.startswith("blocks.")}
    save_file(state, tmp_path / "w.safetensors")
    n_missing = len(CausalWanModel(TINY).state_dict()) - len(state)
    message = load_error(tmp_path / "w.safetensors", CausalWanModel(TINY))
    assert f"{n_missing} missing keys" in message and f"... and {n_missing - 20} more" in message


# ---- configs ----------------------------------------------------------------------------------
def test_infer_config_from_shapes():
    assert infer_config(random_state(WIDE)) == WIDE
    tracks = replace(WIDE, track_channels=4, cross_attn_norm=False, num_layers=3)
    assert infer_config(random_state(tracks)) == tracks
    with pytest.raises(CheckpointError, match="head count"):
        infer_config(random_state(TINY))


def test_infer_config_from_diffusers_config():
    assert infer_config({}, random_diffusers(TINY).config) == replace(TINY, text_len=512)


def test_wan_1_3b_size_on_meta():
    with torch.device("meta"):
        model = CausalWanModel(get_config("wan2.1-1.3b"))
    assert count_parameters(model) == 1_418_996_800
    assert len(model.state_dict()) == 825


# ---- which weights, LoRA (issue 14) ------------------------------------------------------------
def test_weights_key_picks_the_generator_and_says_so(tmp_path):
    ema, online = random_state(WIDE, seed=0), random_state(WIDE, seed=1)
    torch.save({"generator_ema": to_original(ema), "generator": to_original(online)}, tmp_path / "sf.pt")
    default = load_model(tmp_path / "sf.pt")
    assert_same(default.state_dict(), ema)
    assert any("loaded generator_ema" in n and "--weights-key generator" in n for n in default.load_notes)
    chosen = load_model(tmp_path / "sf.pt", weights_key="generator")
    assert_same(chosen.state_dict(), online)
    assert any("loaded the generator weights" in n for n in chosen.load_notes)
    torch.save({"generator": to_original(online)}, tmp_path / "causvid.pt")
    assert "holds only generator" in str(pytest.raises(CheckpointError, load_model, tmp_path / "causvid.pt",
                                                       weights_key="generator_ema").value)


def _original_layout(model: CausalWanModel) -> torch.nn.Module:
    """The Linear layers of the DiT's blocks under Wan's original names (blocks.i.self_attn.q, ...,
    ffn.0 / ffn.2), sharing the model's weights: the module tree LongLive puts its LoRA on."""
    lin = torch.nn.Linear
    blocks = torch.nn.ModuleList()
    for blk in model.blocks:
        b = torch.nn.Module()
        for orig, ours in (("self_attn", blk.attn1), ("cross_attn", blk.attn2)):
            m = torch.nn.Module()
            for name, layer in (("q", ours.to_q), ("k", ours.to_k), ("v", ours.to_v), ("o", ours.to_out[0])):
                copy = lin(layer.in_features, layer.out_features)
                copy.load_state_dict(layer.state_dict())
                setattr(m, name, copy)
            setattr(b, orig, m)
        f0, f2 = blk.ffn.net[0].proj, blk.ffn.net[2]
        b.ffn = torch.nn.Sequential(lin(f0.in_features, f0.out_features), torch.nn.GELU(), lin(f2.in_features, f2.out_features))
        b.ffn[0].load_state_dict(f0.state_dict())
        b.ffn[2].load_state_dict(f2.state_dict())
        blocks.append(b)
    root = torch.nn.Module()
    root.blocks = blocks
    return root


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_lora_merge_matches_peft_forward(tmp_path, scale):
    """LongLive's lora.pt ({"generator_lora": PEFT state dict over every Linear of the attention
    blocks, original Wan names}) merged at load equals peft's own LoRA layers' forward."""
    peft = pytest.importorskip("peft")
    base = random_state(WIDE, seed=0)
    save_file(base, tmp_path / "base.safetensors")
    reference = CausalWanModel(WIDE)
    reference.load_state_dict(base)
    targets = ["q", "k", "v", "o", "ffn.0", "ffn.2"]
    torch.manual_seed(3)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = peft.get_peft_model(_original_layout(reference), cfg)
    lora_state = peft.get_peft_model_state_dict(peft_model)
    assert all(k.startswith("base_model.model.blocks.") and ".lora_" in k for k in lora_state)
    torch.save({"generator_lora": lora_state, "critic_lora": {}}, tmp_path / "lora.pt")

    merged = load_model(tmp_path / "base.safetensors", lora=tmp_path / "lora.pt", lora_scale=scale, lora_alpha=8)
    assert any("merged LoRA lora.pt into 20 layers (rank 4" in n for n in merged.load_notes)
    for module in peft_model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.scaling["default"] *= scale  # what --lora-scale multiplies
    pairs = {"self_attn.q": "attn1.to_q", "self_attn.o": "attn1.to_out.0", "cross_attn.v": "attn2.to_v",
             "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
    ours, theirs = dict(merged.named_modules()), dict(peft_model.base_model.model.named_modules())
    for i in range(WIDE.num_layers):
        for orig, name in pairs.items():
            layer = ours[f"blocks.{i}.{name}"]
            x = torch.randn(5, layer.in_features)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), theirs[f"blocks.{i}.{orig}"](x), atol=1e-5, rtol=1e-5)
            untouched = dict(reference.named_modules())[f"blocks.{i}.{name}"]
            assert not torch.allclose(layer.weight, untouched.weight)  # the LoRA changed it


def test_bad_lora_files_are_one_line(tmp_path):
    save_file(random_state(WIDE), tmp_path / "base.safetensors")
    a = torch.randn(4, 256)
    cases = {
        "not LoRA": ({"blocks.0.attn1.to_q.weight": a}, "not a LoRA weight"),
        "half": ({"blocks.0.attn1.to_q.lora_A.weight": a}, "only lora_A"),
        "shape": ({"blocks.0.attn1.to_q.lora_A.weight": a, "blocks.0.attn1.to_q.lora_B.weight": torch.randn(7, 4)},
                  "do not fit"),
        "missing module": ({"blocks.9.attn1.to_q.lora_A.weight": a, "blocks.9.attn1.to_q.lora_B.weight": torch.randn(256, 4)},
                           "not a Linear layer"),
        "nan": ({"blocks.0.attn1.to_q.lora_A.weight": a * float("nan"),
                 "blocks.0.attn1.to_q.lora_B.weight": torch.randn(256, 4)}, "finite"),
    }
    for name, (state, message) in cases.items():
        save_file(state, tmp_path / f"{name}.safetensors")
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / "base.safetensors", lora=tmp_path / f"{name}.safetensors")


@pytest.mark.parametrize("field,value,message", [
    ("num_attention_heads", 0, "num_attention_heads"), ("num_attention_heads", "16", "num_attention_heads"),
    ("num_attention_heads", -16, "num_attention_heads"), ("num_attention_heads", None, "num_attention_heads"),
    ("patch_size", 2, "patch_size"), ("num_layers", 10**7, "num_layers"), ("num_layers", 3, "3 but the weights hold 2"),
    ("eps", "tiny", "eps"),
])
def test_malformed_diffusers_configs_are_refused(tmp_path, field, value, message):
    import json

    save_file(random_state(TINY), tmp_path / "diffusion_pytorch_model.safetensors")
    cfg = {**TINY.to_diffusers(), "patch_size": [1, 2, 2], field: value}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert message in load_error(tmp_path)


def test_shard_paths_stay_inside_the_folder(tmp_path):
    import json

    save_file(random_state(TINY), tmp_path / "shard.safetensors")
    for entry, message in ((7, "must be a shard file name"), (["a"], "must be a shard file name"),
                           ("../../../../etc/passwd", "outside the checkpoint folder"),
                           ("/etc/passwd", "outside the checkpoint folder")):
        (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"proj_out.weight": "shard.safetensors", "x": entry}}))
        assert message in load_error(tmp_path)


@pytest.mark.parametrize("dtype,message", [(torch.int8, "int8"), (torch.bool, "bool"), (None, "non-finite")])
def test_weights_that_cannot_be_the_model_are_refused(tmp_path, dtype, message):
    state = random_state(WIDE)
    key = "blocks.1.attn1.to_k.weight"
    state[key] = state[key].to(dtype) if dtype is not None else torch.full_like(state[key], float("nan"))
    save_file(state, tmp_path / "w.safetensors")
    assert message in load_error(tmp_path / "w.safetensors")
    assert message in load_error(tmp_path / "w.safetensors", CausalWanModel(WIDE))
