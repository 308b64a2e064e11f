"""Checkpoint loading for the causal Wan DiT: every released format, under diffusers' names.

Reads diffusers folders (single, sharded, or a whole pipeline with a `transformer/` subfolder),
single `.safetensors` files, and the `.pt` pickles of Self-Forcing / CausVid / LongLive, whose
keys are original Wan names under training wrappers (`model.`, `_fsdp_wrapped_module.`, ...).
Original names are converted by diffusers' own converter, never by a table of ours.

Pickles are only ever opened with torch's weights-only unpickler: a checkpoint downloaded from
the internet must not be able to run code. Every failure a user can cause is a `CheckpointError`
naming the file and the problem, so the CLI can print it instead of a traceback.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from streamer.models.wan import CausalWanModel, WanConfig

StateDict = dict[str, torch.Tensor]

# Diffusers file names, sharded index first (a sharded folder may also hold a stale single file).
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
)
# Where training code nests the generator's state dict, in order of preference: the EMA weights
# are the ones Self-Forcing evaluates and releases.
WRAPPER_KEYS = ("generator_ema", "generator", "state_dict", "model", "module")
# Dotted key components added by wrappers (the DiT itself, FSDP, DDP, torch.compile, activation
# checkpointing, ComfyUI / LDM single files); no Wan parameter name contains one of them.
WRAPPER_COMPONENTS = frozenset(
    {"model", "diffusion_model", "_fsdp_wrapped_module", "module", "_orig_mod", "_checkpoint_wrapped_module"}
)
WAN_HEAD_DIM = 128  # every released Wan uses 128-dim heads; the head count is not in the shapes
LATENT_CHANNELS = 16  # Wan2.1 VAE latents; extra input channels are trajectory channels (MotionStream)
LIST_CAP = 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names file and problem."""


# ---- reading files ----------------------------------------------------------------------------
def _unwrap(obj: object, path: Path) -> StateDict:
    """The state dict inside a training checkpoint (or the object itself when it is one)."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            keys = ", ".join(map(str, list(obj)[:LIST_CAP])) or "none"
            raise CheckpointError(f"{path}: holds no tensors (top-level keys: {keys})")
        obj = inner
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")


def _torch_reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused (the rest advises
    weights_only=False); its wording differs across torch versions, hence the loose match."""
    line = next((ln.strip() for ln in str(err).splitlines() if "nsupported" in ln), "")
    line = line.removeprefix("WeightsUnpickler error:").strip()
    return f" (torch: {line.split('. ')[0].rstrip('.')})" if line else ""


def _load_pickle(path: Path, zipped: bool) -> StateDict:
    try:
        # mmap only works on the zip format; it keeps a 3 GB file from being read into memory twice.
        with warnings.catch_warnings():  # torch warns about plain pickles' protocol before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refusing to load a pickle that contains code or objects other than tensors"
            f"{_torch_reason(e)}. If you trust the file, convert it to safetensors "
            "(unpickle it in a trusted environment and save with safetensors.torch.save_file)."
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({str(e) or type(e).__name__})") from None
    return _unwrap(obj, path)


def _read_file(path: Path) -> StateDict:
    """Tensors of one file, by its content, not its extension (.bin may be either format)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len > path.stat().st_size:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header runs past the end)")
        try:
            return _unwrap(load_file(path), path)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):  # the central directory sits at the end: gone if cut short
            raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (incomplete zip archive)")
        return _load_pickle(path, zipped=True)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle, protocol 2-5 (legacy torch.save)
        return _load_pickle(path, zipped=False)
    raise CheckpointError(f"{path}: not a checkpoint (neither safetensors, a torch zip, nor a pickle)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_folder(folder: Path) -> StateDict:
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_file(file)
        weight_map = _read_json(file).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{file}: sharded index without a weight_map")
        state: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_read_file(folder / shard))
        return state
    raise CheckpointError(f"{folder}: folder holds no diffusers weights (expected one of {', '.join(WEIGHT_FILES)})")


# ---- key names --------------------------------------------------------------------------------
def _strip_wrappers(state: StateDict, path: Path) -> StateDict:
    out = {".".join(p for p in k.split(".") if p not in WRAPPER_COMPONENTS): v for k, v in state.items()}
    if len(out) != len(state):
        raise CheckpointError(f"{path}: the same parameter appears under several wrapper prefixes")
    return out


def _is_original_wan(state: StateDict) -> bool:
    return any(k.startswith(("time_embedding.", "text_embedding.", "head.head.")) or ".self_attn." in k for k in state)


def _to_diffusers_names(state: StateDict) -> StateDict:
    # Imported here: diffusers' single-file module takes seconds to import and only original-format
    # checkpoints need it.
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(state)


def load_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict | None]:
    """Tensors of any supported checkpoint under diffusers names, and its diffusers config if it has one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    config = None
    if path.is_dir():
        if (path / "transformer").is_dir():  # a whole diffusers pipeline
            path = path / "transformer"
        if (path / "config.json").is_file():
            config = _read_json(path / "config.json")
        state = _read_folder(path)
    else:
        state = _read_file(path)
    state = _strip_wrappers(state, path)
    if _is_original_wan(state):
        state = _to_diffusers_names(state)
    return state, config


# ---- configs and models -----------------------------------------------------------------------
def infer_config(state: StateDict, diffusers_config: dict | None = None) -> WanConfig:
    """The architecture of a diffusers-named state dict: from its config.json when given, else from shapes.

    Shapes cannot tell the head count; released Wan models all use 128-dim heads, so that is assumed.
    """
    if diffusers_config is not None:
        return WanConfig.from_diffusers(diffusers_config)
    try:
        dim, in_channels, *patch = state["patch_embedding.weight"].shape
        out_channels = state["proj_out.weight"].shape[0] // math.prod(patch)
        ffn_dim = state["blocks.0.ffn.net.0.proj.weight"].shape[0]
        freq_dim = state["condition_embedder.time_embedder.linear_1.weight"].shape[1]
        text_dim = state["condition_embedder.text_embedder.linear_1.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"not a Wan transformer checkpoint: it has no {e.args[0]}") from None
    if dim % WAN_HEAD_DIM:
        raise CheckpointError(
            f"cannot infer the head count: dim {dim} is not a multiple of Wan's head dim {WAN_HEAD_DIM}; "
            "build the model from an explicit config and use load_checkpoint"
        )
    track_channels = 0
    if in_channels > LATENT_CHANNELS and out_channels == LATENT_CHANNELS:
        track_channels, in_channels = in_channels - LATENT_CHANNELS, LATENT_CHANNELS
    num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return WanConfig(
        dim=dim, num_layers=num_layers, num_heads=dim // WAN_HEAD_DIM, ffn_dim=ffn_dim, freq_dim=freq_dim,
        text_dim=text_dim, in_channels=in_channels, out_channels=out_channels, track_channels=track_channels,
        patch_size=tuple(patch), cross_attn_norm="blocks.0.norm2.weight" in state,
    )


def _listing(title: str, items: list[str]) -> str:
    more = f"\n  ... and {len(items) - LIST_CAP} more" if len(items) > LIST_CAP else ""
    return f"{len(items)} {title}:\n  " + "\n  ".join(items[:LIST_CAP]) + more


def _check_fits(expected: StateDict, state: StateDict, path: Path) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped tensor (before torch sees them)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    lists = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
    sections = [(title, items) for title, items in lists if items]
    if sections:
        raise CheckpointError(f"{path} does not fit the model:\n" + "\n".join(_listing(t, i) for t, i in sections))


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into an existing model strictly, cast to each parameter's dtype and device."""
    state, _ = load_state_dict(path)
    expected = model.state_dict()
    _check_fits(expected, state, Path(path))
    # pop as we cast, so the file's copy of a tensor is freed before the next one is made
    model.load_state_dict({k: state.pop(k).to(device=v.device, dtype=v.dtype) for k, v in expected.items()})


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> CausalWanModel:
    """Build the model a checkpoint describes and load it; weights are allocated once, on `device`."""
    state, diffusers_config = load_state_dict(path)
    try:
        config = infer_config(state, diffusers_config)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):  # no random init of 1.4e9 parameters that are overwritten at once
        model = CausalWanModel(config)
    expected = model.state_dict()
    _check_fits(expected, state, Path(path))
    cast = {k: state.pop(k).to(device, dtype if v.is_floating_point() else v.dtype) for k, v in expected.items()}
    model.load_state_dict(cast, assign=True)  # the loaded tensors become the parameters: no second copy
    return model
