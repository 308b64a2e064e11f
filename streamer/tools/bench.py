"""`streamer bench`: end-to-end frame rate, latency and memory over a grid, with baselines.

Every number is measured on a stream, after warm-up, over several repeats (medians):
- end-to-end FPS: video frames / (DiT + decode) time: the headline, decode always included;
- DiT-only FPS, first-frame latency (session start -> first frames decoded, prompt encoding included),
  per-chunk latency p50 / p95 / max, peak memory (RSS on CPU; allocated and reserved on GPU).
Baselines run the same chunk loop in the same process, so every claim is a ratio:
- recompute: no KV cache, the whole window is re-run at every step (StreamingLLM's
  sliding-window recompute baseline), with our model;
- diffusers: the same loop through diffusers' `WanTransformer3DModel` (bidirectional over the
  window), what a user without this project would write.
Random weights time the same as trained ones, so `wan2.1-1.3b` needs no checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamer import checks
from streamer.errors import InputError
from streamer.models.wan import PRESETS
from streamer.device import cpu_model
from streamer.models.frames import video_to_uint8
from streamer.pipeline import Pipeline, check_compile, check_preset_fits, default_device
from streamer.policies import POLICIES, make_policy
from streamer.sampler import SeededNoise, denoise
from streamer.session import Session, StreamConfig

# Published end-to-end FPS on one H100 at 832x480, 4 steps, chunk 3 (DESIGN.md section 4).
PUBLISHED_H100 = {
    "Self-Forcing": 17.0, "LongLive": 20.7, "Reward Forcing": 23.1,
    "MotionStream (full VAE)": 16.7, "MotionStream (tiny VAE, FA3)": 29.5,
}
TARGETS = {  # (fps_e2e, first_frame_s) the project must reach
    "cpu": (24.0, 1.0),
    "cuda:full": (30.0, 0.4),
    "cuda:tiny": (50.0, 0.4),
    "cuda:taehv": (50.0, 0.4),  # the tiny-decoder target, held by the real tiny decoder's size
}
SPEEDUP_TARGETS = {"recompute": 3.0, "diffusers": 1.5}  # over each baseline, same machine, same run


@dataclass(frozen=True)
class Cell:
    preset: str = "default"        # default (shipped model) | tiny | wan2.1-1.3b (random weights)
    size: tuple[int, int] | None = None  # (w, h); None = the model's native size
    steps: int | None = None       # None: the model's own (what `streamer generate` runs)
    chunk: int = 3
    policy: str | None = None      # None: the model's own (what `streamer generate` runs)
    decoder: str = "model"         # model (what the preset ships) | full (Wan VAE) | tiny (TAEHV-style) | taehv
    dtype: str = "auto"            # auto (generate's default for the device) | bf16 | fp16 | fp32
    attention: str = "auto"        # auto | torch | triton (resolved to torch or triton when run)
    compile: str = "off"           # off | blocks | static | graphs (see streamer.pipeline.compile_model)
    fp8: bool = False              # the DiT's block linears in FP8 (torchao; CUDA sm_89+)

    def label(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "native"
        return (f"{self.preset} {size} steps={self.steps or 'own'} chunk={self.chunk} {self.policy or 'own policy'} dec={self.decoder} "
                f"{self.dtype} attn={self.attention}{'' if self.compile == 'off' else ' compile=' + self.compile}{' fp8' if self.fp8 else ''}")


@dataclass
class StreamStats:
    fps_e2e: float
    fps_dit: float
    first_frame_s: float
    chunk_ms_p50: float
    chunk_ms_p95: float
    chunk_ms_max: float
    peak_mem_mb: float
    peak_reserved_mb: float | None = None
    # the stream's own admission estimate (streamer/memory.py, checked before any allocation), for
    # comparison with the measured peak: KV cache, activations and decoder, weights excluded
    estimate_mb: float | None = None
    fps_generate: float | None = None  # `streamer generate`'s own path, mp4 writer included, whole run
    chunk_ms: list[float] = field(default_factory=list)


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None for "auto": `Pipeline.load` then picks the dtype `streamer generate` gets on this device."""
    return {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def build_pipeline(cell: Cell, device: torch.device) -> Pipeline:
    """The pipeline a cell times, through `Pipeline.load` as every command builds one: the shipped
    model, or a random model of a preset's size; the cell's decoder and compile choices."""
    preset = None if cell.preset == "default" else cell.preset
    return Pipeline.load(preset=preset, device=device, dtype=_dtype(cell.dtype, device),
                         decoder=None if cell.decoder == "model" else cell.decoder, compile=cell.compile,
                         fp8=cell.fp8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _summarise(first_frame: float, chunk_s: list[float], dit_s: list[float], frames: list[int], mem: float,
               reserved: float | None) -> StreamStats:
    ms = [1e3 * s for s in chunk_s]
    return StreamStats(
        fps_e2e=sum(frames) / sum(chunk_s), fps_dit=sum(frames) / sum(dit_s), first_frame_s=first_frame,
        chunk_ms_p50=float(np.percentile(ms, 50)), chunk_ms_p95=float(np.percentile(ms, 95)),
        chunk_ms_max=max(ms), peak_mem_mb=mem, peak_reserved_mb=reserved, chunk_ms=ms,
    )


def _peak_mem(device: torch.device, rss: list[float]) -> tuple[float, float | None]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20
    return max(rss), None


def _fresh_prompt() -> str:
    return f"bench prompt {time.time_ns()}"  # never cached, so first-frame latency includes encoding


def time_session(pipe: Pipeline, config: StreamConfig, chunks: int, warmup: int,
                 prompt: str | None = None) -> StreamStats:
    """Stream `warmup + chunks` chunks through our engine; statistics over the last `chunks`."""
    dev = pipe.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(dev)
    t0 = time.perf_counter()
    session = Session(pipe, prompt or _fresh_prompt(), config)
    first_frame = None
    chunk_s, dit_s, frames, rss = [], [], [], []
    for i, chunk in enumerate(session.stream(config.chunk_frames * (warmup + chunks), overlap=dev.type == "cuda")):
        if first_frame is None:
            first_frame = time.perf_counter() - t0
        if i >= warmup:
            chunk_s.append(chunk.dit_seconds + chunk.decode_seconds)
            dit_s.append(chunk.dit_seconds)
            frames.append(len(chunk.frames))
            rss.append(_rss_mb())
    stats = _summarise(first_frame, chunk_s, dit_s, frames, *_peak_mem(dev, rss))
    stats.estimate_mb = session.memory.total / 2**20
    return stats


def time_generate(pipe: Pipeline, config: StreamConfig, chunks: int) -> float:
    """Frames per second of `streamer generate`'s own loop (`cli.generate_video`: Session, decode and
    the H.264 mp4 writer) over a video of `chunks` chunks, from the call to the closed file: the
    number a user of the command gets, first chunk and prompt encoding included."""
    import tempfile

    from streamer.cli import generate_video

    frames = pipe.decoder.frames.video_frames(chunks * config.chunk_frames)
    with tempfile.TemporaryDirectory() as tmp:
        _sync(pipe.device)
        t0 = time.perf_counter()
        n = generate_video(pipe, _fresh_prompt(), Path(tmp) / "bench.mp4", config, frames, progress=False).frames
        _sync(pipe.device)
        return n / (time.perf_counter() - t0)


def _window_frames(pipe: Pipeline, config: StreamConfig) -> int:
    """The window the recompute baseline re-runs: the one the cached session attends to."""
    return getattr(Session(pipe, "window", config).policy, "window", 21)


def time_recompute(pipe: Pipeline, config: StreamConfig, chunks: int, warmup: int,
                   flow_model: Callable | None = None, prompt: str | None = None) -> StreamStats:
    """The chunk loop without a KV cache: at every denoising step the visible window (clean
    history + the noisy chunk) is re-run from scratch. `flow_model(x, t_per_frame, text)` defaults
    to our model, block-causal; the diffusers baseline passes its own."""
    dev, model = pipe.device, pipe.model
    c = config.chunk_frames
    window = _window_frames(pipe, config)
    lh, lw = config.height // model.config.vae_stride[1], config.width // model.config.vae_stride[2]
    noise_source = SeededNoise(config.seed)  # the draws a Session with this config makes, in its order
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(dev)
    t0 = time.perf_counter()
    emb = pipe.text_encoder.encode([prompt or _fresh_prompt()])
    text = model.encode_text(emb) if flow_model is None else emb.to(dev, pipe.dtype)
    if flow_model is None:
        def flow_model(x, t, text_):
            return model(x, t, text_, chunk_frames=c)
    decoder_state = pipe.decoder.new_state()
    history = torch.zeros(1, model.config.out_channels, 0, lh, lw, device=dev)
    timesteps = config.sampler.timesteps()
    first_frame = None
    chunk_s, dit_s, frames, rss = [], [], [], []
    with torch.inference_mode():
        for i in range(warmup + chunks):
            t_start = time.perf_counter()
            hist = history[:, :, max(0, history.shape[2] - (window - c)):]
            n_hist = hist.shape[2]

            def flow(x, t):
                ts = torch.cat([torch.zeros(1, n_hist), torch.full((1, c), float(t))], dim=1).to(dev)
                return flow_model(torch.cat([hist, x], dim=2), ts, text)[:, :, n_hist:].float()

            noise = noise_source((1, model.config.out_channels, c, lh, lw)).to(dev)
            x0 = denoise(flow, noise, timesteps, noise_source)
            history = torch.cat([hist, x0], dim=2)
            _sync(dev)
            t_dit = time.perf_counter()
            video = video_to_uint8(pipe.decoder.decode(x0, decoder_state))[0]
            _sync(dev)
            t_end = time.perf_counter()
            if first_frame is None:
                first_frame = t_end - t0
            if i >= warmup:
                chunk_s.append(t_end - t_start)
                dit_s.append(t_dit - t_start)
                frames.append(len(video))
                rss.append(_rss_mb())
    return _summarise(first_frame, chunk_s, dit_s, frames, *_peak_mem(dev, rss))


def time_diffusers(pipe: Pipeline, config: StreamConfig, chunks: int, warmup: int) -> StreamStats:
    """The same window loop through diffusers' WanTransformer3DModel carrying our weights."""
    from diffusers import WanTransformer3DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its fp32-modules warning on .to(dtype) is about training
    cfg = pipe.model.config
    state = dict(pipe.model.state_dict())
    if cfg.track_channels:
        # diffusers' Wan has no trajectory channels. The patch embedding is linear, so with no
        # tracks (zeros) it equals the same conv restricted to the latent channels: drop the rest.
        state["patch_embedding.weight"] = state["patch_embedding.weight"][:, : cfg.in_channels]
        cfg = dataclasses.replace(cfg, track_channels=0)
    ref = WanTransformer3DModel(**cfg.to_diffusers()).to(device=pipe.device, dtype=pipe.dtype).eval()
    ref.load_state_dict(state)
    _, ph, pw = cfg.patch_size

    def flow_model(x, t_frames, text_emb):
        tokens = (x.shape[3] // ph) * (x.shape[4] // pw)
        t_tokens = t_frames.repeat_interleave(tokens, dim=1)  # diffusers' per-token timesteps
        return ref(x.to(pipe.dtype), t_tokens, text_emb, return_dict=False)[0]

    return time_recompute(pipe, config, chunks, warmup, flow_model=flow_model)


def stream_config(cell: Cell, pipe: Pipeline) -> StreamConfig:
    """The cell's stream through `Pipeline.stream_config`: the defaults `streamer generate` uses."""
    return pipe.stream_config(size=cell.size, policy=cell.policy, steps=cell.steps, chunk_frames=cell.chunk)


def _median_stats(runs: list[StreamStats]) -> StreamStats:
    fields = ["fps_e2e", "fps_dit", "first_frame_s", "chunk_ms_p50", "chunk_ms_p95", "chunk_ms_max", "peak_mem_mb"]
    out = {f: statistics.median(getattr(r, f) for r in runs) for f in fields}
    reserved = [r.peak_reserved_mb for r in runs if r.peak_reserved_mb is not None]
    return StreamStats(**out, peak_reserved_mb=max(reserved) if reserved else None,
                       estimate_mb=runs[0].estimate_mb, chunk_ms=[m for r in runs for m in r.chunk_ms])


def run_cell(cell: Cell, device: torch.device, chunks: int, warmup: int, repeats: int,
             baselines: tuple[str, ...] = ()) -> dict:
    from streamer import kernels

    cell = dataclasses.replace(cell, attention=kernels.select(cell.attention))  # "auto" shown resolved
    pipe = build_pipeline(cell, device)
    config = stream_config(cell, pipe)
    ours = _median_stats([time_session(pipe, config, chunks, warmup) for _ in range(repeats)])
    ours.fps_generate = statistics.median(time_generate(pipe, config, warmup + chunks) for _ in range(repeats))
    # the settings the cell resolved to (a model's own steps, hidden chunks and anchor are not in its label)
    result = {"cell": asdict(cell), "label": cell.label(), "size": [config.width, config.height],
              "steps": list(config.sampler.steps), "hidden_chunks": config.hidden_chunks,
              "drift_anchor": config.drift_anchor, "ours": _public(ours)}
    for name in baselines:
        fn = {"recompute": time_recompute, "diffusers": time_diffusers}[name]
        if name == "recompute" and cell.compile != "off":
            # it runs this cell's (compiled) model on a window whose length changes every chunk: it
            # would time recompilation, not recomputation. Compare an uncompiled cell instead.
            result[name] = {"error": "skipped: a compiled cell's model would recompile at every window length"}
            continue
        try:
            base = _median_stats([fn(pipe, config, chunks, warmup) for _ in range(repeats)])
            result[name] = _public(base)
            result[f"speedup_vs_{name}"] = ours.fps_e2e / base.fps_e2e
        except (ValueError, RuntimeError) as e:  # e.g. diffusers cannot take trajectory channels
            result[name] = {"error": str(e)}
    result["targets"] = _target_check(cell, device, ours)
    result["speedup_targets"] = {
        name: {"target": goal, "met": result[f"speedup_vs_{name}"] >= goal}
        for name, goal in SPEEDUP_TARGETS.items() if f"speedup_vs_{name}" in result}
    if _matches_published(cell, device, config):
        result["published_h100_fps"] = PUBLISHED_H100
    return result


def _public(stats: StreamStats) -> dict:
    d = asdict(stats)
    d.pop("chunk_ms")
    return d


def _target_check(cell: Cell, device: torch.device, s: StreamStats) -> dict | None:
    key = "cpu" if device.type == "cpu" and cell.preset == "default" else (
        f"cuda:{cell.decoder}" if device.type == "cuda" and cell.preset == "wan2.1-1.3b" else None)
    if key not in TARGETS:
        return None
    fps, first = TARGETS[key]
    return {"target_fps": fps, "target_first_frame_s": first, "fps_met": s.fps_e2e >= fps,
            "fps_short_by": max(0.0, fps - s.fps_e2e), "first_frame_met": s.first_frame_s <= first}


def _matches_published(cell: Cell, device: torch.device, config: StreamConfig) -> bool:
    return (device.type == "cuda" and cell.preset == "wan2.1-1.3b" and (config.width, config.height) == (832, 480)
            and len(config.sampler.steps) == 4 and cell.chunk == 3)


# ---- length scaling ---------------------------------------------------------------------------
def length_scaling(cell: Cell, device: torch.device, policies: list[str | None], minutes: float,
                   progress: bool = True) -> dict:
    """Per-chunk time and RSS over a stream of `minutes` of video, per policy (None: the model's own)."""
    from tqdm import tqdm

    out = {}
    for policy in policies:
        c = Cell(**{**asdict(cell), "policy": policy})
        pipe = build_pipeline(c, device)
        config = stream_config(c, pipe)
        policy = config.policy
        n_latent = pipe.decoder.frames.latent_frames(int(minutes * 60 * pipe.fps))
        n_chunks = -(-n_latent // config.chunk_frames)
        session = Session(pipe, "length scaling", config)
        times, mems, frames = [], [], 0
        bar = tqdm(total=n_chunks, desc=f"length {policy}", disable=not progress, leave=False)
        for chunk in session.stream(n_chunks * config.chunk_frames):
            times.append(1e3 * (chunk.dit_seconds + chunk.decode_seconds))
            mems.append(torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb())
            frames += len(chunk.frames)
            bar.update()
        bar.close()
        fill = -(-session.cache.num_slots // config.chunk_frames) + 1  # chunks until the window is full
        if len(times) <= fill:
            raise ValueError(f"--length-minutes {minutes} ends before the {policy} window fills ({fill} chunks)")
        first, last = times[fill : fill + 100], times[-100:]
        out[policy] = {"chunk_ms": times, "mem_mb": mems, "video_seconds": frames / pipe.fps,
                       "fill_chunk": fill, "last_vs_fill_time": statistics.median(last) / statistics.median(first),
                       "mem_growth_mb": max(mems[fill:]) - mems[fill]}
    return out


# ---- output -------------------------------------------------------------------------------------
COLUMNS = [("generate FPS", "fps_generate", "{:.1f}"), ("e2e FPS", "fps_e2e", "{:.1f}"), ("DiT FPS", "fps_dit", "{:.1f}"), ("first frame s", "first_frame_s", "{:.2f}"),
           ("chunk p50 ms", "chunk_ms_p50", "{:.0f}"), ("p95 ms", "chunk_ms_p95", "{:.0f}"),
           ("max ms", "chunk_ms_max", "{:.0f}"), ("peak MB", "peak_mem_mb", "{:.0f}"),
           ("stream estimate MB", "estimate_mb", "{:.0f}")]


def table_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    # "FPS target": the frame rate and first-frame latency asked of this machine's cell; the speed-up
    # targets over the baselines show in their own columns, "(< 3x)" when missed
    header = ["cell"] + [c[0] for c in COLUMNS] + ["vs recompute", "vs diffusers", "FPS target"]
    rows = []
    for r in results:
        row = [r["label"]] + ["-" if r["ours"].get(key) is None else fmt.format(r["ours"][key]) for _, key, fmt in COLUMNS]
        for name in ("recompute", "diffusers"):
            ratio = r.get(f"speedup_vs_{name}")
            short = "" if not ratio or ratio >= SPEEDUP_TARGETS[name] else f" (< {SPEEDUP_TARGETS[name]:g}x)"
            row.append(f"{ratio:.2f}x{short}" if ratio else ("n/a" if name in r else "-"))
        t = r.get("targets")
        row.append("-" if not t else ("met" if t["fps_met"] and t["first_frame_met"] else
                                      f"missed: {t['fps_short_by']:.1f} FPS short" if not t["fps_met"]
                                      else "missed: first frame"))
        rows.append(row)
    return header, rows


def format_table(results: list[dict]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_markdown(results: list[dict], machine: dict, command: str) -> str:
    header, rows = table_rows(results)
    md = [f"Command: `{command}`", "",
          f"Machine: {machine.get('gpu') or machine['cpu']} ({machine['cpu_threads']} threads), "
          f"torch {machine['torch']}, triton {machine.get('triton')}", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    pub = next((r["published_h100_fps"] for r in results if "published_h100_fps" in r), None)
    if pub:
        md += ["", "Published end-to-end FPS on one H100 at 832x480, 4 steps, chunk 3: "
               + ", ".join(f"{k} {v}" for k, v in pub.items())]
    return "\n".join(md) + "\n"


def plot_results(results: list[dict], scaling: dict | None, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(results)))
    labels = [r["label"] for r in results]
    ax.barh(labels, [r["ours"]["fps_e2e"] for r in results], color="#3b7dd8", label="streamer")
    for name, colour in (("recompute", "#d8893b"), ("diffusers", "#999999")):
        vals = [r[name]["fps_e2e"] if isinstance(r.get(name), dict) and "fps_e2e" in r[name] else 0 for r in results]
        if any(vals):
            ax.barh(labels, vals, color=colour, label=name, height=0.4)
    ax.set_xlabel("end-to-end FPS (decode included)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out_dir / "fps.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    if scaling:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for policy, s in scaling.items():
            n = len(s["chunk_ms"])
            minutes = np.linspace(0, s["video_seconds"] / 60, n)
            k = max(1, n // 50)
            smooth = np.convolve(s["chunk_ms"], np.ones(k) / k, mode="valid")  # no zero-padded edges
            a1.plot(minutes[k - 1 :], smooth, label=policy)
            a2.plot(minutes, s["mem_mb"], label=policy)
        a1.set_xlabel("stream position (minutes of video)")
        a1.set_ylabel("chunk time, ms (moving average)")
        a2.set_xlabel("stream position (minutes of video)")
        a2.set_ylabel("memory, MB")
        a2.set_ylim(0, 1.15 * max(max(s["mem_mb"]) for s in scaling.values()))  # flat reads as flat
        a1.legend()
        fig.tight_layout()
        paths.append(out_dir / "length_scaling.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ---- command --------------------------------------------------------------------------------------
def _sizes(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def _size_or_native(text: str) -> str:
    """argparse type of --size: `native` or WxH (checked here, kept as text for the grid)."""
    if text != "native":
        checks.video_size(text)
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark frame rate, latency and memory over a grid",
                       description="Each grid flag takes several values; every combination is one cell.")
    p.add_argument("--preset", nargs="+", default=["default"], choices=["default", *PRESETS],
                   help="default | tiny | wan2.1-1.3b")
    p.add_argument("--size", nargs="+", type=_size_or_native, default=["native"], help="WxH or native")
    p.add_argument("--steps", nargs="+", type=checks.int_in(1, checks.STEPS_MAX), default=[None],
                   help="denoising steps, evenly spaced from t = 1000 (default: the model's own, as `generate` runs)")
    p.add_argument("--chunk", nargs="+", type=checks.int_in(1, 1024), default=[3])
    p.add_argument("--policy", nargs="+", choices=list(POLICIES),
                   help="cache policies (default: the model's own, with its trained knobs, as `generate` runs)")
    p.add_argument("--decoder", nargs="+", default=["model"], choices=["model", "full", "tiny", "taehv"],
                   help="model | full (Wan VAE) | tiny | taehv (TAEHV at taew2_1's size, random weights)")
    p.add_argument("--dtype", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto | bf16 | fp16 | fp32")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "torch", "triton"],
                   help="torch (PyTorch only) | triton (the Triton kernels) | auto: triton on CUDA, else torch")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on", "blocks", "static", "graphs"],
                   help="off | blocks (each block, dynamic shapes; 'on' = this) | static (each block's two halves "
                        "around the cache attention, static shapes) | graphs (static, replayed as CUDA graphs)")
    p.add_argument("--fp8", nargs="+", default=["off"], choices=["off", "on"],
                   help="on: the DiT's block linears in FP8 through torchao (CUDA GPUs of compute capability 8.9+)")
    p.add_argument("--chunks", type=checks.int_in(1), default=20, help="chunks measured per stream, after warm-up")
    p.add_argument("--warmup", type=checks.int_in(0), default=3, help="chunks streamed before measuring")
    p.add_argument("--repeats", type=checks.int_in(1), default=3)
    p.add_argument("--baselines", nargs="*", default=["recompute", "diffusers"], choices=["recompute", "diffusers"],
                   help="recompute, diffusers")
    p.add_argument("--length-minutes", type=checks.finite_float, default=0.0,
                   help="also stream this many minutes of video per --policy and plot chunk time and memory")
    p.add_argument("--device", type=checks.device, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--out", default="bench_results", help="folder for results.json, results.md and plots")
    p.add_argument("--quiet", action="store_true")
    k = p.add_argument_group("kernel microbenchmark (streamer/kernel_bench.py)")
    k.add_argument("--kernels", action="store_true",
                   help="time the Triton kernels against torch SDPA and their references instead of streams")
    k.add_argument("--kernel-shape", choices=["full", "tiny"],
                   help="full: wan2.1-1.3b at 832x480 (default on CUDA); tiny: seconds on a CPU (default there)")
    k.add_argument("--kernel-history", nargs="+", type=checks.int_in(1, 4096), metavar="N",
                   help="history lengths in latent frames (default: 9 12 18 at full size)")
    p.set_defaults(func=cmd_bench)


def _command_line() -> str:
    """The command as typed, for the outputs."""
    import shlex
    import sys

    argv = sys.argv[2:] if sys.argv[1:2] == ["bench"] else []
    return " ".join(["streamer bench"] + [shlex.quote(a) for a in argv])


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.kernels:
        from streamer.tools.kernel_bench import cmd_kernels

        return cmd_kernels(args, _command_line())
    checks.check_writable_folder(args.out)  # before any work: a bench must not end in an unwritable folder
    device = torch.device(args.device) if args.device else default_device()
    grid = [Cell(preset=p, size=_sizes(s), steps=st, chunk=c, policy=pol, decoder=d, dtype=dt, attention=a,
                 compile="blocks" if cp == "on" else cp, fp8=f8 == "on")
            for p, s, st, c, pol, d, dt, a, cp, f8 in itertools.product(
                args.preset, args.size, args.steps, args.chunk, args.policy or [None], args.decoder, args.dtype,
                args.attention, args.compile, args.fp8)]
    from streamer import kernels

    for attention in dict.fromkeys(args.attention):  # kernels this machine cannot run fail at once, not mid-grid
        try:
            kernels.select(attention)
        except ValueError as e:
            raise InputError(f"--attention {attention}: {e}") from None
    for mode in args.compile:  # before any cell runs: a mode this device cannot run fails at once
        check_compile("blocks" if mode == "on" else mode, device)
    if "on" in args.fp8:
        from streamer.models.fp8 import check_fp8_device

        check_fp8_device(device)
    for policy in args.policy or []:
        make_policy(policy, {}, args.chunk[0])  # impossible knobs for this chunk fail here, before any work
    for cell in {(c.preset, c.dtype): c for c in grid if c.preset != "default"}.values():
        # before any cell runs, not after the cells before it; "auto" is bf16 where the dtype counts (a GPU)
        check_preset_fits(cell.preset, _dtype(cell.dtype, device) or torch.bfloat16, device)
    machine = machine_info()
    results = []
    for cell in tqdm(grid, desc="bench", disable=args.quiet):
        results.append(run_cell(cell, device, args.chunks, args.warmup, args.repeats, tuple(args.baselines)))
    scaling = None
    if args.length_minutes > 0:
        scaling = length_scaling(grid[0], device, args.policy or [None], args.length_minutes, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = _command_line()
    doc = {"machine": machine, "command": command, "results": results}
    if scaling:
        doc["length_scaling"] = scaling
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    md = format_markdown(results, machine, command)
    if scaling:
        md += "\nLength scaling (chunk time at the end vs at window fill; memory growth after fill):\n\n"
        md += "| policy | video minutes | last-100 / first-100 chunk time | memory growth MB |\n|---|---|---|---|\n"
        md += "".join(f"| {p} | {s['video_seconds'] / 60:.1f} | {s['last_vs_fill_time']:.3f} | {s['mem_growth_mb']:.1f} |\n"
                      for p, s in scaling.items())
    (out / "results.md").write_text(md)
    plots = []
    try:
        plots = plot_results(results, scaling, out)
    except ImportError:
        print("matplotlib is not installed: no plots")
    print(format_table(results))
    for r in results:
        t = r.get("targets")
        if t and not (t["fps_met"] and t["first_frame_met"]):
            print(f"FPS target missed for {r['label']}: {r['ours']['fps_e2e']:.1f} FPS vs {t['target_fps']} "
                  f"({t['fps_short_by']:.1f} short), first frame {r['ours']['first_frame_s']:.2f} s vs "
                  f"{t['target_first_frame_s']} s")
        for name, t in r.get("speedup_targets", {}).items():
            if not t["met"]:
                print(f"speed-up target missed for {r['label']}: {r[f'speedup_vs_{name}']:.2f}x over {name}, "
                      f"target {t['target']:g}x")
    if scaling:
        for p, s in scaling.items():
            print(f"length scaling {p}: last-100/first-100 chunk time {s['last_vs_fill_time']:.3f}, "
                  f"memory growth {s['mem_growth_mb']:.1f} MB over {s['video_seconds'] / 60:.1f} min")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {p}" for p in plots))
    return 0
