"""The `streamer` command."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streamer import _IMPORTED, checks
from streamer.errors import CheckpointError, InputError, StreamerError
from streamer.policies import POLICIES, PolicyError, parse_policy_args  # torch-free: keeps --help instant

_size = checks.video_size  # WxH, both in 1..65536


def latent_frames_for(video_frames: int, chunk: int, rule=None) -> int:
    """Latent frames (a whole number of chunks) whose decode covers `video_frames` frames, by the
    decoder's frame rule (`decoder.frames`; default Wan's: 1 video frame from the first latent
    frame, 4 from each later one)."""
    if rule is None:
        from streamer.models.frames import FrameRule

        rule = FrameRule()
    return chunk * math.ceil(max(rule.latent_frames(video_frames), 1) / chunk)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="DiT weights: diffusers folder, .safetensors, or Self-Forcing/CausVid/LongLive .pt")
    g.add_argument("--vae", help="Wan VAE: diffusers folder (or pipeline folder with vae/), or Wan2.1_VAE.pth; "
                                 "or TAEHV's taew2_1.pth, the tiny decoder (fast decode); 'random' for a random tiny VAE (timing)")
    g.add_argument("--text-encoder", help="umT5 folder (tokenizer + encoder, or a Wan pipeline folder); 'hash' for a "
                                          "meaningless hash encoder of umT5's size (timing)")
    g.add_argument("--weights-key", choices=["generator_ema", "generator"],
                   help="which weights of a Self-Forcing/CausVid .pt holding both (default: generator_ema, "
                        "as Self-Forcing's inference uses)")
    g.add_argument("--lora", metavar="FILE", help="LoRA merged into --checkpoint at load (PEFT keys; LongLive's lora.pt)")
    g.add_argument("--lora-scale", type=checks.finite_float, default=1.0, help="multiplier of the LoRA update (default 1)")
    g.add_argument("--lora-alpha", type=checks.finite_float,
                   help="LoRA alpha (default: the rank, i.e. alpha/r = 1, as LongLive's config has)")
    g.add_argument("--device", type=checks.device, help="cuda / cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU; on a CPU whichever of bf16 and fp32 streams faster there (measured on "
                        "the first run, cached per machine)")
    g.add_argument("--attention", default="auto", choices=["auto", "torch", "triton"],
                   help="auto (default): the Triton kernels on CUDA when installed, else torch")
    g.add_argument("--compile", default="off", choices=["off", "blocks", "static", "graphs"],
                   help="torch.compile the DiT: static (each block's two halves around the cache attention, one "
                        "shape for the whole stream) or graphs (static, replayed as CUDA graphs; CUDA only); "
                        "the first chunk pays the compilation")
    g.add_argument("--fp8", action="store_true",
                   help="FP8 weights and activations in the DiT's block linears (torchao; CUDA GPUs of compute "
                        "capability 8.9+: Ada, Hopper)")


def _add_stream_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stream")
    g.add_argument("--size", type=_size, help="WxH video size (default: the model's native size)")
    g.add_argument("--seed", type=checks.int_in(0, checks.SEED_MAX), default=0,
                   help="noise seed (default 0): the same seed and settings give the same video on the same machine")
    g.add_argument("--steps", type=checks.int_in(1, checks.STEPS_MAX), help="denoising steps, evenly spaced from t = 1000 "
                   "(default: the model's own; Self-Forcing's 4 for models that do not say)")
    g.add_argument("--chunk", type=checks.int_in(1, 1024), default=3, help="latent frames per chunk (default 3 = 12 video frames)")
    g.add_argument("--hidden-chunks", type=checks.int_in(0, checks.HIDDEN_CHUNKS_MAX), metavar="N",
                   help=f"chunks made from noise before the first one shown (0-{checks.HIDDEN_CHUNKS_MAX}), so the video "
                        "starts on the background the model settles on; each delays the first frame by one chunk "
                        "(default: the model's own, 1 for the shipped model, else 0; none after an image or video start)")
    g.add_argument("--drift-anchor", choices=("on", "off"),
                   help="hold a still background's level at that of the first chunk the stream makes (a hidden "
                        "one, if any): each later chunk's background cells are shifted back by its median latent "
                        "difference from that chunk, per channel, and those still within 0.3 of it are moved half "
                        "of the rest of the way back (the hold, from v16), so neither the brightness drifts nor a "
                        "faded trail lingers however long the stream runs; after a prompt "
                        "switch it takes a new reference once the new scene has settled. For still cameras only "
                        "(default: the model's own, on for the shipped world model, else off)")
    g.add_argument("--guidance", type=checks.non_negative_float,
                   help="text classifier-free guidance scale: 1 = off, 0 = the empty prompt alone, above 1 the prompt "
                        "weighs more; each guided step runs the DiT twice "
                        "(default: the model's own, stored with its weights; 1 for checkpoints without one, "
                        "such as the distilled Self-Forcing ones)")
    g.add_argument("--policy", help=f"KV cache policy: {', '.join(POLICIES)} (default: the model's own, else window)")
    g.add_argument("--policy-arg", action="append", default=[], metavar="K=V",
                   help="policy knob, repeatable; with the model's own policy it changes that knob and keeps the "
                        "model's others (another policy starts from its paper's defaults)")


# Subcommands that live in their own modules, each adding its parser with `register(subparsers)`
# (and setting `func`), with the one-line help `streamer --help` shows. Only the module of the command
# being run is imported: each pulls in torch and more, and `streamer --help` must answer at once.
_COMMANDS = {
    "serve": ("streamer.ui.command", "open the browser UI: paint tracks, watch the stream live"),
    "bench": ("streamer.tools.bench", "benchmark frame rate, latency and memory over a grid"),
    "eval": ("streamer.world.evaluate", "score long streams of the default world model against ground truth"),
    "train": ("streamer.world.train", "train the default world model from a recipe"),
    "kernels": ("streamer.kernels.aot", "compile the Triton kernels for a GPU (none needed) and report resources"),
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad argument is one line (`streamer generate: error: ...`, exit 2)
    rather than the whole usage block first: the project's rule for every bad input. --help still
    prints the usage. Subparsers made from it are of this class too."""

    given: tuple[str, ...] = ()  # the command line's option words, set by build_parser
    words: tuple[str, ...] = ()  # the command line without the command's name, set by build_parser
    _reparsing = False

    def error(self, message: str):
        if self._reparsing:  # the second pass of `_unknown_options` only asks what is left over
            raise _Reparse
        if message.startswith("the following arguments are required:"):
            # argparse names missing required options first and a missing required group (--prompt or
            # --prompt-file) only once they are given: name both in the one message
            for group in self._mutually_exclusive_groups:
                options = [o for a in group._group_actions for o in a.option_strings]
                if group.required and not any(o.startswith(w) for o in options for w in self.given if len(w) > 2):
                    message += f", one of {' '.join(options)}"
        if message.startswith(("the following arguments are required:", "one of the arguments")):
            # ...and it names what is missing before an unknown option: a typo is the likelier fault
            unknown = self._unknown_options()
            if unknown:
                message = f"unrecognized arguments: {' '.join(unknown)} (and {message})"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _unknown_options(self) -> list[str]:
        """The option words of `words` that this parser does not take, by parsing them again with
        nothing required (so a prompt that starts with '--' is a value, as argparse reads it)."""
        saved = [(x, x.required) for x in (*self._actions, *self._mutually_exclusive_groups)]
        self._reparsing = True
        try:
            for x, _ in saved:
                x.required = False
            _, extras = self.parse_known_args(list(self.words))
        except (_Reparse, SystemExit):
            return []
        finally:
            for x, required in saved:
                x.required = required
            self._reparsing = False
        return [w for w in extras if w.startswith("-") and w != "--"]


class _Reparse(Exception):
    """Raised by `OneLineParser.error` during its own second pass."""


def shipped_model_version() -> str:
    """The shipped default model's version ("v17"): the head of its DiT's "step" metadata, read from
    the safetensors header alone (no torch import). "unknown" when the file or the field is missing."""
    path = Path(__file__).parent / "weights" / "dit.safetensors"
    try:
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    except (OSError, ValueError):
        return "unknown"
    step = str(header.get("__metadata__", {}).get("step", ""))
    return step.split(":", 1)[0] or "unknown"


class _Version(argparse.Action):
    """--version: printed on demand, so building the parser reads no file."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("streamer")
        except PackageNotFoundError:
            package = "unknown"
        print(f"streamer {package}, default model {shipped_model_version()}")
        parser.exit()


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `streamer` parser. With `argv`, only the subcommand it names is built in full (the others
    appear in --help by name and one line); without, every subcommand is built."""
    parser = OneLineParser(prog="streamer", description="Real-time autoregressive video diffusion.")
    parser.add_argument("--version", action=_Version, help="the package's version and the shipped model's")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate videos headless to mp4",
                         description="Generate a video (or one per line of a prompt file) to H.264 mp4, "
                                     "writing frames as they are made.")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text prompt")
    src.add_argument("--prompt-file", help="one prompt per line; --out is then a folder (works under accelerate launch)")
    length = gen.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=checks.positive_seconds, help="video length in seconds (default 5)")
    length.add_argument("--frames", type=checks.int_in(1), help="video length in frames")
    gen.add_argument("--out", required=True, help="output .mp4 (a folder with --prompt-file)")
    gen.add_argument("--tracks", help="motion trajectories to follow: .npz/.json (own or ATI-style), or Wan-Move "
                                      "tracks.npy / folder (models with trajectory channels, e.g. the default)")
    gen.add_argument("--loop-tracks", action="store_true",
                     help="repeat the tracks from their start until the video ends (for closed paths)")
    start = gen.add_mutually_exclusive_group()
    start.add_argument("--image", metavar="FILE",
                       help="start from this picture (PNG/JPEG/WebP): it is the first frame; resized to cover "
                            "--size and centre-cropped. With --tracks: tracks drawn on the picture drag what they start on")
    start.add_argument("--continue", dest="continue_from", metavar="VIDEO",
                       help="continue this video (any file FFmpeg reads): the output holds its frames, then "
                            "--seconds/--frames new ones; --size defaults to the video's (another size fits it by the size rule: "
                            "resized to cover, centre-cropped)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_stream_args(gen)
    _add_model_args(gen)
    gen.set_defaults(func=cmd_generate)
    gen.given = tuple(a.split("=", 1)[0] for a in argv or () if a.startswith("--"))
    if argv and (name := _command_of(argv)) is not None:
        gen.words = tuple(argv[:argv.index(name)] + argv[argv.index(name) + 1:])
    wanted = _command_of(argv) if argv is not None else None
    for name, (module, help_text) in _COMMANDS.items():
        if argv is None or name == wanted:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load_pipeline(args):
    import torch

    from streamer import kernels
    from streamer.pipeline import Pipeline

    try:
        kernels.select(args.attention)
    except ValueError as e:
        raise InputError(f"--attention {args.attention}: {e}") from None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype or "")
    vae, text_encoder = checkpoint_companions(args)
    options = {k: v for k, v in dict(weights_key=args.weights_key, lora=args.lora, lora_scale=args.lora_scale,
                                     lora_alpha=args.lora_alpha).items() if v is not None}
    try:
        pipe = Pipeline.load(checkpoint=args.checkpoint, vae=vae, text_encoder=text_encoder,
                             device=args.device, dtype=dtype, checkpoint_options=options or None,
                             fp8=getattr(args, "fp8", False), compile=getattr(args, "compile", "off"))
    except pickle.UnpicklingError as e:  # torch's multi-line weights-only refusal, from the VAE or text encoder
        from streamer.models.loader import unsafe_pickle_message

        raise CheckpointError(unsafe_pickle_message(_failed_input(e, vae, text_encoder), e)) from None
    for note in getattr(pipe.model, "load_notes", []):  # which weights, which LoRA (models/loader.py)
        print(f"note: {note}", file=sys.stderr)
    return pipe


def _failed_input(err: BaseException, vae, text_encoder) -> str:
    """Which of --vae / --text-encoder a loading error came from (by the module it was raised in)."""
    tb, files = err.__traceback__, []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    if any(f.endswith(("text.py", "modeling_utils.py", "transformers/utils/hub.py")) for f in files) and text_encoder:
        return f"--text-encoder {text_encoder}"
    return f"--vae {vae}" if vae else f"--text-encoder {text_encoder}"


def checkpoint_companions(args) -> tuple[str | None, str | None]:
    """--vae / --text-encoder for a --checkpoint: a Wan diffusers pipeline folder supplies its own
    `vae/` and `text_encoder/`; otherwise both must be named. A real DiT is never silently paired
    with the random tiny VAE and the hash text encoder: `--vae random --text-encoder hash` asks for them."""
    vae, text = args.vae, args.text_encoder
    if (args.lora or args.weights_key) and not args.checkpoint:
        raise InputError("--lora and --weights-key apply to a --checkpoint; none was given")
    if args.checkpoint is None:
        vae, text = (None if vae == "random" else vae), (None if text == "hash" else text)
        stand_ins = [f"{flag} {v}" for flag, v in (("--vae", args.vae), ("--text-encoder", args.text_encoder))
                     if v in ("random", "hash")]
        if stand_ins and vae is None and text is None:
            # nothing real given: the shipped default model loads, with its own autoencoder and text encoder
            verb = "stand" if len(stand_ins) > 1 else "stands"
            raise InputError(f"{' and '.join(stand_ins)} {verb} in for a --checkpoint's companions; none was given "
                             "(the default model uses its own)")
        return vae, text
    folder = checks.check_input_path(args.checkpoint, "--checkpoint")  # before asking for --vae with it
    if folder.is_dir() and (folder / "vae").is_dir() and vae is None:
        vae = str(folder)
    if folder.is_dir() and (folder / "text_encoder").is_dir() and text is None:
        text = str(folder)
    missing = [flag for flag, v in (("--vae", vae), ("--text-encoder", text)) if v is None]
    if missing:
        raise InputError(
            f"--checkpoint {args.checkpoint} needs {' and '.join(missing)} (e.g. a Wan2.1-T2V-1.3B-Diffusers folder); "
            "to run it with the random tiny VAE and the hash text encoder, pass --vae random --text-encoder hash")
    return (None if vae == "random" else vae), (None if text == "hash" else text)


def _stream_config(args, pipe):
    # the model's own policy: a knob given changes that knob, the others stay the model's (as eval)
    knobs = pipe.knobs_over_own(args.policy, parse_policy_args(args.policy_arg))
    return pipe.stream_config(size=args.size, policy=args.policy, policy_args=knobs,
                              steps=args.steps, chunk_frames=args.chunk, seed=args.seed, guidance=args.guidance,
                              hidden_chunks=args.hidden_chunks,
                              drift_anchor=None if args.drift_anchor is None else args.drift_anchor == "on")


@dataclass
class Generated:
    """What `generate_video` wrote: `frames` video frames in all; `first_frame_s`, seconds from the
    process's start (`process_seconds`) until the first generated frame was in the file (None when
    none was): the latency a user pressing Enter sees, imports and model loading included."""

    frames: int
    first_frame_s: float | None


def generate_video(pipe, prompt: str, out: Path, config, video_frames: int, progress: bool = True,
                   trajectory=None, start_latents=None, original: Path | None = None) -> Generated:
    """Stream one video into `out`. Frames are written as they are decoded, so an interrupted run
    leaves a playable file with what was made.

    `start_latents` [1, C, n, h, w]: clean latents that begin the stream (an encoded image: its
    decoded frame is the video's first). `original`: a video being continued, whose frames are
    written first, as read; `start_latents` are then its encoded last frames, whose decode is not
    written again, and `video_frames` counts the new frames only."""
    from tqdm import tqdm

    from streamer.session import Session
    from streamer.video import Mp4Writer

    rule = pipe.decoder.frames
    session = Session(pipe, prompt, config, tracks=trajectory, start_latents=start_latents)
    if start_latents is None:
        latents = latent_frames_for(video_frames, config.chunk_frames, rule)
    elif original is None:  # the image's latent frame is the video's first
        latents = rule.latent_frames(video_frames)
    else:  # after the continued video's own latents, enough to decode video_frames more
        latents = start_latents.shape[2] + -(-video_frames // rule.temporal_stride)
    # one frame rate on the bar: tqdm's, as the average since the bar appeared (smoothing 0: frames
    # over wall time, the first chunk's latency and the mp4 writing in it; the model's loading is
    # before), beside the last chunk's latency (its DiT + decode, for 12 frames at 16 fps: 750 ms of video)
    bar = tqdm(total=video_frames, unit="frame", desc=out.name, disable=not progress, dynamic_ncols=True,
               smoothing=0)
    written = 0
    writer = None
    first_frame_s = None
    try:
        with Mp4Writer(out, fps=pipe.fps, width=config.width, height=config.height) as writer:
            if original is not None:
                from streamer.images import fit_frames, read_video

                for frame in read_video(original):  # by the size rule where --size is not the video's
                    writer.write(fit_frames(frame[None], config.width, config.height))
                video_frames += writer.frames_written
                written = writer.frames_written
                bar.total = video_frames
                bar.update(written)
            # decode overlapped with the next chunk's DiT where it pays: on a GPU (a side stream); on a
            # 2-core CPU a decode thread measured 0.94x (the two share the cores), so not there
            for chunk in session.stream(latents, overlap=pipe.device.type == "cuda"):
                if original is not None and chunk.index == 0:
                    continue  # the continued video's last frames, already written as they were
                frames = chunk.frames[: video_frames - written]
                writer.write(frames)
                if first_frame_s is None:
                    first_frame_s = process_seconds()
                written += len(frames)
                seconds = chunk.dit_seconds + chunk.decode_seconds
                # refresh=False: the update below redraws once, rate and latency together
                bar.set_postfix(last_chunk_ms=f"{seconds * 1e3:.0f}", refresh=False)
                bar.update(len(frames))
    except KeyboardInterrupt as e:
        # what the file really holds, for the caller's message (0: no frame was made)
        e.frames_written = writer.frames_written if writer is not None else 0
        raise
    finally:
        bar.close()
    return Generated(written, first_frame_s)


# Python's own start-up, before it imports streamer, takes well under this (0.05-0.3 s measured);
# a process older than that by the first import ran something else first
_EXEC_SLACK_S = 1.5


def _count(n: int, noun: str) -> str:
    """'1 frame', '9 frames'."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _prompt_note(pipe, prompt: str, what: str) -> None:
    """A note when `prompt` is longer than the text encoder reads (it is cut at `text_len` tokens)."""
    from streamer.models.text import overflow_note

    note = overflow_note(pipe.text_encoder, prompt, what)
    if note:
        print(f"note: {note}", file=sys.stderr)


def process_seconds() -> float:
    """Seconds since this command started. On Linux since the process started (from /proc), so the
    interpreter's own start-up and every import count, as a user pressing Enter sees it; but where
    the process is more than `_EXEC_SLACK_S` older than streamer's first import it ran other work
    before it became this command (`bash -c 'setup && streamer ...'` execs streamer in the shell's
    own process, which had spent the set-up's minutes), and the count starts at that import, as it
    does off Linux."""
    since_import = time.perf_counter() - _IMPORTED
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return since_import
    return age if age - since_import < _EXEC_SLACK_S else since_import


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """SIGTERM (kill, job schedulers) and SIGHUP (a closed terminal or ssh session) stop like Ctrl-C:
    the file is closed with every frame made so far; during loading, one line and exit 130."""
    for name in ("SIGTERM", "SIGHUP"):
        try:
            signal.signal(getattr(signal, name), _raise_keyboard_interrupt)
        except (AttributeError, ValueError):  # no such signal here, or not the main thread
            pass


def _check_paths(args) -> None:
    """Every path of a generate run, before the model loads: inputs are regular files or folders,
    the output can be written and is none of the inputs."""
    inputs = [("--tracks", args.tracks), ("--image", args.image), ("--continue", args.continue_from),
              ("--checkpoint", args.checkpoint), ("--vae", args.vae),
              ("--text-encoder", args.text_encoder), ("--lora", args.lora), ("--prompt-file", args.prompt_file)]
    checks.check_not_input(args.out, inputs)
    if args.loop_tracks and not args.tracks:
        raise InputError("--loop-tracks repeats the --tracks file's tracks; no --tracks was given")
    if args.prompt_file:
        checks.check_input_file(args.prompt_file, "--prompt-file")
        out = Path(args.out)
        if out.suffix.lower() == ".mp4" and not out.is_dir():  # one video per prompt goes into a folder
            raise InputError(f"--out {args.out}: with --prompt-file, --out is a folder that gets one video per "
                             f"prompt; give a folder name such as {out.with_suffix('')}")
        checks.check_writable_folder(args.out, what=f"the output folder {args.out}")
    else:
        checks.check_writable_file(args.out)
    if args.lora:
        checks.check_input_file(args.lora, "--lora")


def _check_start_video(args):
    """--continue, before the model loads: the video is readable and has a video stream; --size
    defaults to its size. Returns its VideoInfo. Raises InputError for no video stream, an
    unreadable file, or --prompt-file. A --size other than the video's is noted (the size rule fits it)."""
    from streamer.images import open_video

    if args.prompt_file:
        raise InputError("--continue takes one --prompt, not a --prompt-file")
    if args.loop_tracks:
        raise InputError("--loop-tracks cannot be used with --continue (the tracks start at the video's last frame)")
    info = open_video(args.continue_from, picture_hint="; start from it with --image")
    if args.size is not None and tuple(args.size) != (info.width, info.height):
        print(f"note: --continue {args.continue_from} is {info.width}x{info.height}: its frames are resized to "
              f"cover {args.size[0]}x{args.size[1]} and centre-cropped (aspect kept)", file=sys.stderr)
    args.size = args.size or (info.width, info.height)
    return info


def _encode_video_tail(args, pipe, config):
    """The last frames of the --continue video, as many as the frame rule and the cache's context
    allow (the largest 1 + 4k that fits the policy's window beside one chunk), encoded to clean
    latents [1, C, n, h, w]."""
    from streamer.images import copy_video, encode_frames, fit_frames, start_frame_count
    from streamer.policies import make_policy
    from streamer.session import latent_size

    try:  # before encoding: a size the stream cannot take is the user's to change (the size rule fits it)
        latent_size(pipe, config.width, config.height)
    except ValueError as e:
        raise InputError(f"--continue {args.continue_from}: {e}; give --size (the video is resized to cover it "
                         "and centre-cropped)") from None
    chunk = config.chunk_frames
    # frames the cache keeps as context beside the chunk being made; capped at Wan's 21 (81 frames)
    context = max(1, min(21, make_policy(config.policy, config.policy_args, chunk=chunk).num_slots(chunk) - chunk))
    keep = pipe.decoder.frames.video_frames(context)
    count, tail = copy_video(args.continue_from, keep, lambda frames: None)
    n = start_frame_count(count, context, pipe.decoder.frames)
    return encode_frames(pipe, fit_frames(tail[-n:], config.width, config.height)), count


def _start_image(picture, pipe, config, trajectory):
    """--image: the picture (a StartImage as read) fitted to the stream by the size rule and encoded
    (one clean latent frame). Tracks drawn on the picture (their frame size is the picture's) are
    mapped by the same rule. Returns (start latents [1, C, 1, h, w], trajectory)."""
    from streamer.images import encode_frames, fit_points, fit_start_image

    image = fit_start_image(picture, config.width, config.height)
    for note in image.notes:
        print(f"note: {note}", file=sys.stderr)
    src_w, src_h = image.source_size
    if (trajectory is not None and (trajectory.width, trajectory.height) == (src_w, src_h)
            and (src_w, src_h) != (config.width, config.height)):
        from streamer.trajectory import Trajectory

        trajectory = Trajectory(fit_points(trajectory.tracks, src_w, src_h, config.width, config.height),
                                trajectory.visible, trajectory.fps, config.width, config.height, trajectory.loop)
        print(f"note: the tracks are in the picture's {src_w}x{src_h} pixels: mapped with it (cover, centre-crop)",
              file=sys.stderr)
    return encode_frames(pipe, image.pixels[None]), trajectory


def _tracks_from_last_frame(trajectory, tail_frames: int):
    """--continue with --tracks: the tracks' frame 0 is the continued video's last frame (their first
    points lie on what is there, as on a start image). The stream begins `tail_frames` frames earlier,
    with the re-encoded last frames, so the tracks are preceded by tail_frames - 1 invisible frames."""
    import numpy as np

    from streamer.trajectory import Trajectory

    lead = tail_frames - 1
    if lead == 0:
        return trajectory
    tracks = np.concatenate([np.repeat(trajectory.tracks[:1], lead, 0), trajectory.tracks])
    visible = np.concatenate([np.zeros((lead, trajectory.num_tracks), bool), trajectory.visible])
    return Trajectory(tracks, visible, trajectory.fps, trajectory.width, trajectory.height)


def cmd_generate(args) -> int:
    _stop_on_signals()
    _check_paths(args)
    picture = video_info = None
    if args.image:  # read before the model loads: a bad picture costs no loading time
        from streamer.images import read_image

        picture = read_image(args.image)
    if args.continue_from:
        video_info = _check_start_video(args)
    pipe = _load_pipeline(args)
    if video_info is not None and video_info.fps and abs(video_info.fps - pipe.fps) > 0.01 * pipe.fps:
        print(f"note: --continue {args.continue_from} is at {video_info.fps:g} fps; the output is written at "
              f"the model's {pipe.fps:g} fps, so its original part plays at {pipe.fps / video_info.fps:.2f}x speed",
              file=sys.stderr)
    config = _stream_config(args, pipe)
    video_frames = args.frames or max(1, round((args.seconds or 5.0) * pipe.fps))
    if args.seconds and round(args.seconds * pipe.fps) < 1:
        print(f"note: --seconds {args.seconds:g} is under one frame at {pipe.fps:g} fps; writing one frame "
              f"({1 / pipe.fps:.3f} s)", file=sys.stderr)
    trajectory = None
    if args.tracks:
        from streamer.trajectory import Trajectory

        trajectory = Trajectory.load(args.tracks, width=config.width, height=config.height, fps=pipe.fps)
        if not pipe.model.config.track_channels:
            raise InputError("--tracks needs a model with trajectory channels (the default model has them)")
        if trajectory.fps != pipe.fps:  # as the browser's import does: positions follow time, not frame numbers
            print(f"note: the tracks are at {trajectory.fps:g} fps; resampled in time to the video's "
                  f"{pipe.fps:g} fps", file=sys.stderr)
            trajectory = trajectory.resampled(pipe.fps)
        if args.loop_tracks:
            trajectory = trajectory.looping()  # per frame on demand: no looped copy of the whole video
        elif trajectory.num_frames < video_frames:
            print(f"note: the tracks cover {trajectory.num_frames / pipe.fps:.2f} s of the "
                  f"{video_frames / pipe.fps:.2f} s video; after that nothing is dragged "
                  "(--loop-tracks repeats them)", file=sys.stderr)
    start_latents, original = None, None
    if args.image:
        start_latents, trajectory = _start_image(picture, pipe, config, trajectory)
    elif args.continue_from:
        start_latents, count = _encode_video_tail(args, pipe, config)
        original = Path(args.continue_from)
        if trajectory is not None:
            trajectory = _tracks_from_last_frame(trajectory, pipe.decoder.frames.video_frames(start_latents.shape[2]))
        latents = start_latents.shape[2]
        tail = pipe.decoder.frames.video_frames(latents)
        print(f"note: continuing {_count(count, 'frame')} of {original.name} from its last "
              f"{tail if tail > 1 else 'one'} (encoded to {_count(latents, 'latent frame')})", file=sys.stderr)
    if start_latents is not None and args.hidden_chunks:
        print(f"note: --hidden-chunks {args.hidden_chunks} applies to streams from noise; an {'--image' if args.image else '--continue'} "
              "start is the video's first frames, so nothing is hidden", file=sys.stderr)
    if pipe.is_random:
        print(f"note: no --checkpoint given: running a {pipe.description}. The output is not a real video model's.",
              file=sys.stderr)
    if args.prompt_file:
        import logging

        from streamer.batch import run_prompt_file

        logging.basicConfig(level=logging.INFO, format="%(message)s")  # per-process progress lines
        def one(prompt: str, path: Path) -> None:  # noted here: by the process making it, not when made before
            _prompt_note(pipe, prompt, f"the prompt of {path.name}")
            generate_video(pipe, prompt, path, config, video_frames, progress=not args.quiet, trajectory=trajectory,
                           start_latents=start_latents)

        try:
            results = run_prompt_file(args.prompt_file, args.out, one)
        except KeyboardInterrupt as e:  # what is kept, as a single video's interrupt says
            kept = getattr(e, "frames_written", 0)
            now = f"; the video being made keeps its {kept} frames as a .partial.mp4, made again from the start " \
                  "by the next run" if kept else ""
            print(f"{'' if args.quiet else chr(10)}interrupted: the videos finished so far stay in {args.out}{now}",
                  file=sys.stderr)
            return 130
        done = sum(1 for r in results if r[2] == "done")
        print(f"{done} videos made, {len(results) - done} already there, in {args.out}")
        return 0

    _prompt_note(pipe, args.prompt, "--prompt")
    out = Path(args.out)
    try:
        made = generate_video(pipe, args.prompt, out, config, video_frames, progress=not args.quiet,
                           trajectory=trajectory, start_latents=start_latents, original=original)
    except KeyboardInterrupt as e:
        kept = getattr(e, "frames_written", 0)
        if kept == 0:
            if out.is_file():
                out.unlink()  # a header without frames is not a video; never leave one behind
            checks.remove_made_folders()  # nor the folders made for it
            print(f"{'' if args.quiet else chr(10)}interrupted before the first frame: no video written", file=sys.stderr)
        else:
            print(f"{'' if args.quiet else chr(10)}interrupted: {out} keeps the {kept} frames made so far", file=sys.stderr)
        return 130
    n = made.frames
    first = f"; first frame {made.first_frame_s:.1f} s after start" if made.first_frame_s is not None else ""
    print(f"wrote {_count(n, 'frame')} ({n / pipe.fps:.2f} s, {config.width}x{config.height}) to {out}{first}")
    return 0


def _hold_interrupts() -> dict:
    """Ignore SIGINT, SIGTERM and SIGHUP from now on; returns the handlers to put back (none off the
    main thread, where signal handlers cannot be set)."""
    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        try:
            previous[name] = signal.signal(getattr(signal, name), signal.SIG_IGN)
        except (AttributeError, ValueError):
            pass
    return previous


def _release_interrupts(previous: dict) -> None:
    for name, handler in previous.items():
        signal.signal(getattr(signal, name), handler)


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input of any kind prints `streamer <command>: error: <message>` and returns 2,
    an interrupt (Ctrl-C, SIGTERM, SIGHUP) one line and 130. STREAMER_DEBUG=1 shows tracebacks."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the subcommand's parser ("streamer generate: error: ..."), not the top one's
            subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse has printed usage and its one-line error (or --help)
        return e.code if isinstance(e.code, int) else 2
    checks.forget_made_folders()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # a second Ctrl-C (or `timeout`'s signal to the whole group) while this handler runs would
        # end it with a traceback: ignored until the one line is out
        previous = _hold_interrupts()
        try:
            checks.remove_made_folders()
            if os.environ.get("STREAMER_DEBUG"):
                raise
            # the newline ends a progress bar's line; --quiet has none
            print(("" if getattr(args, "quiet", False) else "\n") + "streamer: interrupted", file=sys.stderr)
            return 130
        finally:
            _release_interrupts(previous)
    except (StreamerError, PolicyError, ValueError, OSError) as e:
        checks.remove_made_folders()
        if os.environ.get("STREAMER_DEBUG"):
            raise
        # the same prefix as argparse's own errors for this command ("streamer generate: error: ...")
        print(f"streamer {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        checks.forget_made_folders()


if __name__ == "__main__":
    sys.exit(main())
