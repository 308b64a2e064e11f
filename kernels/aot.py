"""Compile every Triton kernel for a GPU that is not here, at the real model's shapes, and read
what the compiler made of it: registers, spills, shared memory, tensor-core and async-copy use.

Triton's own compiler and ptxas (both in the triton wheel) run on any machine: no GPU or driver is
needed to produce the sm_90 (H100) or sm_80 (A100) machine code. What cannot be checked without a
GPU is speed, but the usual reasons a kernel is slow are visible in the binary: register spills
(local-memory stores in the inner loop), no tensor-core instructions (HGMMA on Hopper, HMMA before),
no asynchronous loads (LDGSTS / UTMALDG: the K/V tiles are not pipelined), shared memory over the
SM's limit (the launch fails), or an occupancy of zero.

How: each kernel's public wrapper is called on full-size CPU tensors with its launch intercepted;
the captured arguments are specialised exactly as Triton's JIT would specialise them on a GPU
(pointer alignment, integers divisible by 16 or equal to 1), then compiled for the target, once per
autotune config. `streamer kernels --arch 90 80` prints the table. The interpreter (TRITON_INTERPRET=1)
replaces kernels by Python functions, so this runs in a process without it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Per-SM limits that decide how many blocks fit (CUDA occupancy calculator figures).
SM_LIMITS = {
    90: dict(regs=65536, smem=228 * 1024, smem_per_block=227 * 1024, warps=64, blocks=32),
    80: dict(regs=65536, smem=164 * 1024, smem_per_block=163 * 1024, warps=64, blocks=32),
}
MMA_OPS = ("HGMMA", "HMMA")          # warpgroup (Hopper) and warp-level tensor-core instructions
ASYNC_LOAD_OPS = ("LDGSTS", "UTMALDG")  # cp.async and TMA bulk tensor loads


@dataclass
class Launch:
    kernel: object  # the module attribute the wrapper launches: a JITFunction or an Autotuner
    args: tuple
    kwargs: dict


@dataclass
class KernelReport:
    kernel: str
    case: str
    arch: int
    config: str
    registers: int
    spill_stores: int   # STL instructions: stores to thread-local memory
    stack_bytes: int
    shared_bytes: int
    mma: int            # tensor-core instructions in the binary
    async_loads: int    # cp.async / TMA load instructions
    blocks_per_sm: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.blocks_per_sm > 0


# ---- capture --------------------------------------------------------------------------------------

class _Recorder:
    def __init__(self, kernel: object, launches: list[Launch]):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(Launch(self.kernel, args, kwargs))
        return launch


@contextmanager
def captured(module, name: str) -> Iterator[list[Launch]]:
    """Within the block, launches of `module.name` are recorded instead of run."""
    launches: list[Launch] = []
    original = getattr(module, name)
    setattr(module, name, _Recorder(original, launches))
    try:
        yield launches
    finally:
        setattr(module, name, original)


# ---- compile --------------------------------------------------------------------------------------

def _triton_bin(tool: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def _configs(kernel: object) -> list:
    """(label, launch options) per config: an autotuner's search space (the CUDA one: this module runs
    without the interpreter), or ("fixed", {}) for a kernel whose wrapper picks its own launch."""
    out = []
    for c in getattr(kernel, "configs", None) or []:
        opts = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        tiles = " ".join(f"{k[6:]}={v}" for k, v in c.kwargs.items() if k.startswith("BLOCK_"))
        loads = " tma" if c.kwargs.get("USE_TMA") else ""
        out.append((f"{tiles} w{c.num_warps} s{c.num_stages}{loads}", opts))
    return out or [("fixed", {})]


def compile_launch(launch: Launch, options: dict, arch: int):
    """Compile a captured launch for sm_<arch> as Triton's JIT would on that GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    jit = launch.kernel if hasattr(launch.kernel, "params") else getattr(launch.kernel, "fn", None)
    if not hasattr(jit, "params"):  # an Autotuner wraps the JITFunction; the interpreter has neither
        raise RuntimeError("kernels are Python functions here: unset TRITON_INTERPRET to compile them")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(launch.kwargs, **options)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound, specialization, opts = binder(*launch.args, **kwargs)
    opts, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, opts)
    return triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target, options=opts.__dict__)


def inspect_binary(compiled, arch: int) -> dict:
    """Registers, stack, shared memory and the instruction mix of a compiled kernel's cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_triton_bin("cuobjdump"), "-res-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_triton_bin("cuobjdump"), "-sass", str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK):(\d+)", usage))
    # opcode of each instruction line "/*0040*/  @P0 LDG.E.128 R4, ..." (predicate optional)
    ops = Counter(m.split(".")[0] for m in re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass))
    regs, warps = int(fields.get("REG", 0)), compiled.metadata.num_warps
    shared = compiled.metadata.shared
    lim = SM_LIMITS.get(arch, SM_LIMITS[90])
    by_regs = lim["regs"] // max(1, regs * 32 * warps)
    by_smem = lim["smem"] // shared if shared else lim["blocks"]
    fits = shared <= lim["smem_per_block"]
    return dict(registers=regs, stack_bytes=int(fields.get("STACK", 0)), spill_stores=ops["STL"],
                shared_bytes=shared, mma=sum(ops[o] for o in MMA_OPS), async_loads=sum(ops[o] for o in ASYNC_LOAD_OPS),
                blocks_per_sm=min(by_regs, by_smem, lim["warps"] // warps, lim["blocks"]) if fits else 0)


# ---- the kernels at the model's shapes ------------------------------------------------------------

@dataclass
class Case:
    kernel: str            # attribute name of the launched kernel in `module`
    name: str
    module: object
    call: Callable[[], object]


WAN_HEADS, WAN_HEAD_DIM, WAN_TOKENS = 12, 128, 1560  # wan2.1-1.3b at 832x480: 1560 tokens per latent frame


def model_cases(history_frames: int = 18, chunk_frames: int = 3, dtype: torch.dtype = torch.bfloat16) -> list[Case]:
    """Every kernel, called as the streaming model calls it at the wan2.1-1.3b, 832x480 shape."""
    from streamer.kernels import adaln, attention_mass, cache_attention, gated_residual, qk_norm_rope, rope

    h, d, tpf = WAN_HEADS, WAN_HEAD_DIM, WAN_TOKENS
    sq = chunk_frames * tpf
    e = lambda *s: torch.empty(*s, dtype=dtype)  # noqa: E731  contents never read: only compiled
    q, k, v = e(1, sq, h, d), e(1, sq, h, d), e(1, sq, h, d)
    slots = 21  # the largest cache the policies allocate (deep-sink / rolling-sink)
    history = cache_attention.CacheSegment.at(e(1, slots, tpf, h, d), e(1, slots, tpf, h, d),
                                              list(range(history_frames)), [float(i) for i in range(history_frames)])
    compressed = (e(1, tpf, h, d), e(1, tpf, h, d))  # deep-forcing's compressed tokens: a frame's worth
    lse = torch.empty(1, h, sq, dtype=torch.float32)
    x = e(1, sq, h * d)
    per_frame = torch.empty(1, chunk_frames, h * d, dtype=torch.float32)
    w = torch.empty(h * d, dtype=dtype)
    cos_sin = torch.empty(sq, d // 2, dtype=torch.float32)
    return [
        Case("_cache_attention_kernel", f"{history_frames} cached + {chunk_frames} chunk frames", cache_attention,
             lambda: cache_attention.cache_attention(q, history, [(k, v)])),
        Case("_cache_attention_kernel", "+ compressed tokens", cache_attention,
             lambda: cache_attention.cache_attention(q, history, [compressed, (k, v)])),
        Case("_attention_mass_kernel", "mass per cached token", attention_mass,
             lambda: attention_mass.attention_mass(q, lse, history, [(k, v)])),
        Case("_participation_kernel", "recent-query scores", attention_mass,
             lambda: attention_mass.participation_scores(q[:, -tpf:], history.k[:, 0],
                                                         torch.zeros(tpf, dtype=torch.float64))),
        Case("_qk_norm_rope_kernel", "q, k [4680, 1536]", qk_norm_rope,
             lambda: qk_norm_rope.qk_norm_rope(x, x, w, w, cos_sin, cos_sin, h)),
        Case("_rope_kernel", "q [4680, 12, 128]", rope, lambda: rope.rope(q, cos_sin, cos_sin)),
        Case("_layernorm_modulate_kernel", "[4680, 1536]", adaln,
             lambda: adaln.layernorm_modulate(x, per_frame, per_frame)),
        Case("_gated_residual_kernel", "[4680, 1536]", gated_residual,
             lambda: gated_residual.gated_residual(x, x, per_frame)),
    ]


def compile_report(archs: list[int], cases: list[Case] | None = None) -> list[KernelReport]:
    reports = []
    for case in cases if cases is not None else model_cases():
        with captured(case.module, case.kernel) as launches:
            case.call()
        for launch in launches:
            for label, options in _configs(launch.kernel):
                for arch in archs:
                    if options.get("USE_TMA") and arch < 90:  # TMA is Hopper's; the kernel prunes it before
                        continue
                    base = dict(kernel=case.kernel.strip("_"), case=case.name, arch=arch, config=label)
                    try:
                        info = inspect_binary(compile_launch(launch, options, arch), arch)
                        reports.append(KernelReport(**base, **info))
                    except Exception as err:  # a config that does not compile is a finding, not a crash
                        msg = str(err).strip().splitlines()
                        reports.append(KernelReport(**base, registers=0, spill_stores=0, stack_bytes=0, shared_bytes=0,
                                                    mma=0, async_loads=0, blocks_per_sm=0,
                                                    error=(msg[-1] if msg else type(err).__name__)[:200]))
    return reports


def format_reports(reports: list[KernelReport]) -> str:
    head = ["kernel", "case", "sm", "config", "regs", "spill st", "stack B", "smem KB", "mma", "async ld",
            "blocks/SM", "note"]
    rows = [[r.kernel, r.case, str(r.arch), r.config, str(r.registers), str(r.spill_stores), str(r.stack_bytes),
             f"{r.shared_bytes / 1024:.0f}", str(r.mma), str(r.async_loads), str(r.blocks_per_sm),
             r.error or ("" if r.ok else "does not fit")] for r in reports]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---- CLI ------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="compile the Triton kernels for a GPU (none needed) and report resources",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", type=int, default=[90], help="compute capabilities: 90 (H100), 80 (A100)")
    p.add_argument("--history", type=int, default=18, help="cached latent frames the chunk attends (default 18)")
    p.add_argument("--json", help="also write the reports to this JSON file")
    p.set_defaults(func=cmd_kernels)


def cmd_kernels(args: argparse.Namespace) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("TRITON_INTERPRET=1 turns the kernels into Python functions: unset it to compile them")
    os.environ["STREAMER_TRITON"] = "1"  # compiling needs Triton even without a GPU (see kernels/_triton.py)
    from streamer.kernels._triton import HAVE_TRITON

    if not HAVE_TRITON:
        raise ValueError("Triton is not installed: `pip install triton` (its compiler runs without a GPU)")
    bad = [a for a in args.arch if a not in SM_LIMITS]
    if bad:
        raise ValueError(f"unsupported --arch {bad}: choose from {sorted(SM_LIMITS)}")
    reports = compile_report(args.arch, model_cases(args.history))
    print(format_reports(reports))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps([asdict(r) for r in reports], indent=1))
    failed = [r for r in reports if not r.ok]
    if failed:
        print(f"{len(failed)} kernel/config combinations do not compile or do not fit", file=sys.stderr)
    return 1 if failed else 0
