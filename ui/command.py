"""`streamer serve`: the CLI entry of the browser UI. Kept apart from app.py so that building the
CLI's parser (every `streamer` command) does not import Gradio; app.py loads only for `serve`."""

from __future__ import annotations

import argparse

from streamer import checks


def register(subparsers) -> None:
    """Add `streamer serve` to the CLI."""
    p = subparsers.add_parser("serve", help="open the browser UI: paint tracks, watch the stream live",
                              description="Serve the Gradio app: a canvas to paint trajectories over the live "
                                          "frame, the live stream, its controls and recording.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=checks.int_in(1, 65535), default=7860, help="port to serve on (default 7860)")
    p.add_argument("--size", type=checks.video_size,
                   help="WxH of every stream, multiples of 16 (default: the model's native size)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="extra model choice: DiT weights (repeatable); loaded with --vae / --text-encoder")
    p.add_argument("--vae", help="Wan VAE (diffusers folder or Wan2.1_VAE.pth), or TAEHV's taew2_1.pth, for --checkpoint models")
    p.add_argument("--text-encoder", help="umT5 folder for --checkpoint models")
    p.add_argument("--weights-key", choices=["generator_ema", "generator"],
                   help="which weights of a Self-Forcing .pt holding both (default generator_ema)")
    p.add_argument("--lora", metavar="FILE", help="LoRA merged into each --checkpoint at load (LongLive's lora.pt)")
    p.add_argument("--lora-scale", type=checks.finite_float, default=1.0, help="multiplier of the LoRA update")
    p.add_argument("--lora-alpha", type=checks.finite_float, help="LoRA alpha (default: the rank)")
    p.add_argument("--device", type=checks.device, nargs="+",
                   help="where streams run: one or more of cpu, cuda, cuda:N (default: cuda when available); "
                        "each new stream goes to the one with the most free memory, one scheduler each")
    p.add_argument("--max-live", type=checks.int_in(1, 64), default=4,
                   help="streams advancing at once per device (default 4); more wait in line and are told their place")
    p.add_argument("--token", help="require this token on the /api routes (Authorization: Bearer TOKEN); "
                                   "made up and printed when --host is not this machine and none is given")
    p.set_defaults(func=serve)


def check_args(args: argparse.Namespace) -> None:
    """What `generate` refuses before loading, refused before the server starts (not when the first
    stream asks for a model): --size a multiple of the models' 16-pixel grid, every model path there.
    Raises InputError."""
    from streamer.errors import InputError
    from streamer.models.wan import WanConfig
    from streamer.session import size_problem

    # every model served is a Wan DiT (the presets and --checkpoint's), with Wan's stride and patch
    why = size_problem(WanConfig(), *args.size) if args.size else None
    if why:
        raise InputError(f"--size {args.size[0]}x{args.size[1]} is not possible: {why}")
    for ckpt in args.checkpoint:
        checks.check_input_path(ckpt, "--checkpoint")
    for flag, path, stand_in in (("--vae", args.vae, "random"), ("--text-encoder", args.text_encoder, "hash")):
        if path and path != stand_in:
            checks.check_input_path(path, flag)
    if args.lora:
        checks.check_input_file(args.lora, "--lora")


def serve(args: argparse.Namespace) -> int:
    from streamer import kernels
    from streamer.ui.app import serve as serve_app

    check_args(args)
    kernels.select("auto")  # the Triton kernels on CUDA, torch elsewhere
    return serve_app(args)
