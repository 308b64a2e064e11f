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
import numbers
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from streamer.models.errors import CheckpointError
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
WEIGHTS_KEYS = ("generator_ema", "generator")  # the choices of --weights-key (Self-Forcing .pt files hold both)
LORA_WRAPPER_KEYS = ("generator_lora", *WRAPPER_KEYS)  # LongLive's lora.pt: {"generator_lora": PEFT state dict, ...}
WAN_HEAD_DIM = 128  # every released Wan uses 128-dim heads; the head count is not in the shapes
LATENT_CHANNELS = 16  # Wan2.1 VAE latents; extra input channels are trajectory channels (MotionStream)
LIST_CAP = 20
# Limits of a config or a state dict that can be a model at all, checked before anything is allocated
# (a config claiming 10^7 layers would otherwise hang building modules). Wan2.1-14B: 40 layers, dim 5120.
MAX_LAYERS = 1000
MAX_WIDTH = 1 << 16  # dim, ffn_dim, text_dim, freq_dim, channels


__all__ = ["CheckpointError", "infer_config", "load_checkpoint", "load_model", "load_state_dict"]


# ---- reading files ----------------------------------------------------------------------------
def _unwrap(obj: object, path: Path, weights_key: str | None = None, notes: list[str] | None = None,
            wrapper_keys: tuple[str, ...] = WRAPPER_KEYS) -> StateDict:
    """The state dict inside a training checkpoint (or the object itself when it is one).

    weights_key: "generator_ema" or "generator", for files that hold both (Self-Forcing); None takes
    the EMA weights as Self-Forcing's inference does. Which one was taken is appended to `notes`.
    """
    if weights_key is not None and weights_key not in WEIGHTS_KEYS:
        raise CheckpointError(f"weights_key must be one of {', '.join(WEIGHTS_KEYS)}, not {weights_key!r}")
    while isinstance(obj, dict):
        present = [k for k in WEIGHTS_KEYS if isinstance(obj.get(k), dict) and obj[k]]
        if weights_key is not None and present:
            if weights_key not in present:
                raise CheckpointError(f"{path}: --weights-key {weights_key}: the file holds only {', '.join(present)}")
            if notes is not None:
                notes.append(f"{path.name}: loaded the {weights_key} weights (--weights-key)")
            obj = obj[weights_key]
            continue
        if len(present) == 2 and notes is not None:
            notes.append(f"{path.name}: holds generator_ema and generator; loaded generator_ema "
                         "(Self-Forcing's inference default; --weights-key generator for the other)")
        inner = next((obj[k] for k in wrapper_keys if isinstance(obj.get(k), dict) and obj[k]), None)
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


def _load_pickle(path: Path, zipped: bool, **unwrap) -> StateDict:
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
    return _unwrap(obj, path, **unwrap)


def unsafe_pickle_message(path: str | os.PathLike, err: Exception) -> str:
    """One line for torch's multi-line weights-only refusal of a pickle (any file, any loader)."""
    return (f"{path}: refusing to load a pickle that contains code or objects other than tensors{_torch_reason(err)}; "
            "if you trust the file, convert it to safetensors")


def _read_file(path: Path, **unwrap) -> StateDict:
    """Tensors of one file, by its content, not its extension (.bin may be either format).
    unwrap: weights_key / notes / wrapper_keys for `_unwrap`."""
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
            return _unwrap(load_file(path), path, **unwrap)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):  # the central directory sits at the end: gone if cut short
            raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (incomplete zip archive)")
        return _load_pickle(path, zipped=True, **unwrap)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle, protocol 2-5 (legacy torch.save)
        return _load_pickle(path, zipped=False, **unwrap)
    raise CheckpointError(f"{path}: not a checkpoint (neither safetensors, a torch zip, nor a pickle)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _shard_path(folder: Path, index: Path, key: object, shard: object) -> Path:
    """A shard named by a sharded index: a relative file name that stays inside the checkpoint folder."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index}: weight_map[{key!r}] must be a shard file name, not {shard!r}")
    target = (folder / shard).resolve()
    if Path(shard).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{index}: shard {shard!r} lies outside the checkpoint folder; refusing to open it")
    return folder / shard


def _read_folder(folder: Path, **unwrap) -> StateDict:
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_file(file, **unwrap)
        weight_map = _read_json(file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{file}: sharded index without a weight_map")
        shards = {_shard_path(folder, file, k, v) for k, v in weight_map.items()}  # all checked before any is read
        state: StateDict = {}
        for shard in sorted(shards):
            state.update(_read_file(shard, **unwrap))
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


def load_state_dict(path: str | os.PathLike, weights_key: str | None = None,
                    notes: list[str] | None = None) -> tuple[StateDict, dict | None]:
    """Tensors of any supported checkpoint under diffusers names, and its diffusers config if it has one.
    weights_key: generator_ema / generator for Self-Forcing .pt files (None: EMA); `notes` gets a line
    saying which was loaded."""
    unwrap = dict(weights_key=weights_key, notes=notes)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    config = None
    if path.is_dir():
        if (path / "transformer").is_dir():  # a whole diffusers pipeline
            path = path / "transformer"
        if (path / "config.json").is_file():
            config = _read_json(path / "config.json")
        state = _read_folder(path, **unwrap)
    else:
        state = _read_file(path, **unwrap)
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
        return _checked_config(WanConfig.from_diffusers(_check_diffusers_config(diffusers_config)), state)
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
            "pass the architecture explicitly: load_model(path, config=WanConfig(...))"
        )
    track_channels = 0
    if in_channels > LATENT_CHANNELS and out_channels == LATENT_CHANNELS:
        track_channels, in_channels = in_channels - LATENT_CHANNELS, LATENT_CHANNELS
    num_layers = len(_block_indices(state))
    return _checked_config(WanConfig(
        dim=dim, num_layers=num_layers, num_heads=dim // WAN_HEAD_DIM, ffn_dim=ffn_dim, freq_dim=freq_dim,
        text_dim=text_dim, in_channels=in_channels, out_channels=out_channels, track_channels=track_channels,
        patch_size=tuple(patch), cross_attn_norm="blocks.0.norm2.weight" in state,
    ), state)


# diffusers config.json fields: (name, kind); kind "int" = positive whole number, "patch" = 3 positive ints
_CONFIG_FIELDS = (
    ("num_attention_heads", "int"), ("attention_head_dim", "int"), ("num_layers", "int"), ("ffn_dim", "int"),
    ("freq_dim", "int"), ("text_dim", "int"), ("in_channels", "int"), ("out_channels", "int"),
    ("patch_size", "patch"), ("eps", "float"), ("cross_attn_norm", "bool"),
)


def _check_diffusers_config(cfg: dict) -> dict:
    """Every architecture field of a diffusers config.json the right type and range, or one line naming it."""
    def positive_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 < x <= (MAX_LAYERS if name == "num_layers" else MAX_WIDTH)

    for name, kind in _CONFIG_FIELDS:
        if name not in cfg:
            continue
        value = cfg[name]
        if kind == "int":
            ok = positive_int(value)
            want = f"a whole number in 1..{MAX_LAYERS if name == 'num_layers' else MAX_WIDTH}"
        elif kind == "patch":
            ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(positive_int(v) for v in value)
            want = "3 positive whole numbers [t, h, w], e.g. [1, 2, 2]"
        elif kind == "float":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1
            want = "a number in (0, 1)"
        else:
            ok, want = isinstance(value, bool), "true or false"
        if not ok:
            raise CheckpointError(f"config.json: {name} must be {want}, not {value!r}")
    return cfg


def _block_indices(state: StateDict) -> set[int]:
    found = set()
    for k in state:
        m = re.match(r"blocks\.(\d+)\.", k)
        if m:
            found.add(int(m.group(1)))
    return found


def _checked_config(config: WanConfig, state: StateDict) -> WanConfig:
    """A config that the weights can fill, checked before a module is built: as many blocks as the
    weights hold (numbered 0..L-1), at most MAX_LAYERS."""
    blocks = _block_indices(state)
    if not 0 < config.num_layers <= MAX_LAYERS:
        raise CheckpointError(f"num_layers must be in 1..{MAX_LAYERS}, got {config.num_layers}")
    if blocks and blocks != set(range(len(blocks))):
        raise CheckpointError(f"the weights' blocks are not numbered 0..{len(blocks) - 1} (highest: {max(blocks)})")
    if blocks and len(blocks) != config.num_layers:
        raise CheckpointError(f"config num_layers={config.num_layers} but the weights hold {len(blocks)} blocks")
    return config


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


def _check_values(expected: StateDict, state: StateDict, path: Path) -> None:
    """Weights that can be the model's: floating-point where the model is (int8, bool or other integer
    tensors would be cast to garbage), and finite (a NaN or inf weight renders noise or black)."""
    for k, v in expected.items():
        t = state[k]
        if v.is_floating_point() and not t.is_floating_point():
            raise CheckpointError(f"{path}: {k} is {str(t.dtype).removeprefix('torch.')}, not floating point "
                                  "(quantized or corrupt weights are not supported)")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            share = float((~torch.isfinite(t)).float().mean())
            raise CheckpointError(f"{path}: {k} has non-finite values (NaN/inf in {share:.0%} of it)")


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into an existing model strictly, cast to each parameter's dtype and device."""
    state, _ = load_state_dict(path)
    expected = model.state_dict()
    _check_fits(expected, state, Path(path))
    _check_values(expected, state, Path(path))
    # pop as we cast, so the file's copy of a tensor is freed before the next one is made
    model.load_state_dict({k: state.pop(k).to(device=v.device, dtype=v.dtype) for k, v in expected.items()})


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    weights_key: str | None = None, lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
    lora_alpha: float | None = None, config: WanConfig | None = None,
) -> CausalWanModel:
    """Build the model a checkpoint describes and load it; weights are allocated once, on `device`.

    config: the architecture, given explicitly (e.g. `get_config("tiny")` or a WanConfig with head_dim
    other than Wan's 128, which shapes alone cannot reveal); None: from the checkpoint's config.json,
    else inferred from the tensor shapes. The weights must then fit it exactly (CheckpointError if not).
    weights_key: generator_ema / generator of a Self-Forcing .pt (None: the EMA weights).
    lora: a LoRA file merged into the weights (`merge_lora`; LongLive = base .pt + lora.pt).
    `model.load_notes` holds one line per choice made (which weights, which LoRA).
    Raises CheckpointError (one line naming file and field) for anything that cannot be this model.
    """
    notes: list[str] = []
    state, diffusers_config = load_state_dict(path, weights_key=weights_key, notes=notes)
    try:
        config = _checked_config(config, state) if config is not None else infer_config(state, diffusers_config)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (ValueError, TypeError) as e:  # WanConfig's own checks (dim divisible by heads, even head_dim)
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):  # no random init of 1.4e9 parameters that are overwritten at once
        model = CausalWanModel(config)
    expected = model.state_dict()
    _check_fits(expected, state, Path(path))
    _check_values(expected, state, Path(path))
    cast = {k: state.pop(k).to(device, dtype if v.is_floating_point() else v.dtype) for k, v in expected.items()}
    model.load_state_dict(cast, assign=True)  # the loaded tensors become the parameters: no second copy
    if lora is not None:
        notes.append(merge_lora(model, lora, scale=lora_scale, alpha=lora_alpha))
    model.load_notes = notes
    return model


# ---- LoRA -------------------------------------------------------------------------------------
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def read_lora(path: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{diffusers module name: (A [r, in], B [out, r])} from a PEFT-layout LoRA file.

    Accepts PEFT state dicts (`<module>.lora_A.weight`, `<module>.lora_B.weight`, optionally an
    adapter name before `.weight`), under `base_model.model.` and training wrappers, nested in
    LongLive's {"generator_lora": ...}, with original Wan or diffusers module names.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such LoRA file")
    raw = _read_file(path, wrapper_keys=LORA_WRAPPER_KEYS)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in raw.items():
        key = key.removeprefix("base_model.model.")
        m = _LORA_KEY.match(key)
        if m is None:
            raise CheckpointError(f"{path}: {key} is not a LoRA weight (expected <module>.lora_A.weight / .lora_B.weight)")
        module = ".".join(p for p in m["module"].split(".") if p not in WRAPPER_COMPONENTS)
        pairs.setdefault(module, {})[m["ab"]] = t
    if not pairs:
        raise CheckpointError(f"{path}: holds no LoRA weights")
    half = [m for m, ab in pairs.items() if len(ab) != 2]
    if half:
        raise CheckpointError(f"{path}: {half[0]} has only lora_{next(iter(pairs[half[0]]))} (both A and B are needed)")
    names = list(pairs)
    if _is_original_wan({f"{n}.weight": None for n in names}):
        # rename through diffusers' converter, as for the base weights: module.weight -> diffusers module.weight
        probe = {f"{n}.weight": torch.empty(0) for n in names}
        converted = _to_diffusers_names(dict(probe))
        if len(converted) != len(probe):
            raise CheckpointError(f"{path}: LoRA module names do not map one-to-one onto the model's")
        order = {id(v): k for k, v in converted.items()}
        renamed = {order[id(probe[f"{n}.weight"])].removesuffix(".weight"): n for n in names}
        pairs = {new: pairs[old] for new, old in renamed.items()}
    return {m: (ab["A"], ab["B"]) for m, ab in pairs.items()}


@torch.no_grad()
def merge_lora(model: torch.nn.Module, path: str | os.PathLike, scale: float = 1.0, alpha: float | None = None) -> str:
    """Merge a LoRA into the model's Linear weights in place: W += scale * (alpha / r) * B @ A, the update
    PEFT's LoRA layer adds to its base layer's output (computed in float32, cast back). alpha None: the
    rank (alpha / r = 1; LongLive's config has alpha = rank = 256). Returns a one-line note."""
    if not (isinstance(scale, numbers.Real) and math.isfinite(scale)):
        raise CheckpointError(f"lora_scale must be a finite number, not {scale!r}")
    if alpha is not None and not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha > 0):
        raise CheckpointError(f"lora_alpha must be a finite number > 0, not {alpha!r}")
    path = Path(path)
    pairs = read_lora(path)
    modules = dict(model.named_modules())
    ranks = set()
    for name, (a, b) in pairs.items():
        layer = modules.get(name)
        if not isinstance(layer, torch.nn.Linear):
            raise CheckpointError(f"{path}: LoRA targets {name}, which is not a Linear layer of this model")
        out_f, in_f = layer.weight.shape
        r = a.shape[0] if a.ndim == 2 else -1
        if a.ndim != 2 or b.ndim != 2 or a.shape != (r, in_f) or b.shape != (out_f, r):
            raise CheckpointError(f"{path}: {name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit "
                                  f"its weight {(out_f, in_f)} (need A [r, {in_f}], B [{out_f}, r])")
        for t, which in ((a, "A"), (b, "B")):
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: {name}.lora_{which} must be finite floating-point weights")
        ranks.add(r)
        w = layer.weight
        factor = scale * ((alpha if alpha is not None else r) / r)
        delta = b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)
        w.copy_((w.float() + factor * delta).to(w.dtype))
    rank = "/".join(str(r) for r in sorted(ranks))
    return (f"merged LoRA {path.name} into {len(pairs)} layers (rank {rank}, alpha {alpha if alpha is not None else rank}, "
            f"scale {scale:g})")
