#!/usr/bin/env bash
# Collect the wheels the trainer needs beyond what the GPU machine has (torch with CUDA, transformers,
# tokenizers, safetensors, numpy, ...) for a machine with no network (docs/gpu.md): DeepSpeed and
# its small dependencies only. Run it here, where PyPI is reachable:
#
#   bash benchmarks/gpu_bundle.sh                 # into .gpu_bundle/ (git-ignored), for CPython 3.12
#   GPU_PYTHON=3.11 bash benchmarks/gpu_bundle.sh # another Python on the GPU machine
#
# Then, on the GPU machine, from the repository root:
#
#   python3 -m pip install --no-index --no-deps --no-compile --target /tmp/site .gpu_bundle/*.whl
#   PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py
#
# What goes in: DeepSpeed (built here as a wheel with no ops: it compiles none at install and needs
# none for the trainer) and those of its requirements the GPU image lacks (hjson, pydantic and
# pydantic's own), at the versions this project's venv runs. Left out: what the lent GPU image
# holds (its package list, /work/.library/device/KINDS.md, read 2026-12-05: torch, transformers,
# tokenizers, safetensors, huggingface-hub, numpy, pyyaml, einops, msgpack, ninja, packaging,
# psutil, py-cpuinfo, tqdm, typing-extensions), Ray and MLflow (a single training needs neither).
# `--no-compile` on install: no .pyc writing for minutes of the lease. The bundle stays under 10 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TARGET_PY=${GPU_PYTHON:-3.12}
OUT=${GPU_BUNDLE_DIR:-.gpu_bundle}
LIMIT_MIB=10
[ -x "$PY" ] || { echo "error: $PY not found; install the project first (README), or set PYTHON=..." >&2; exit 2; }

rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
# name==version of every distribution the trainer needs, read from the installed metadata
"$PY" - > "$OUT.tmp/requirements.txt" <<'EOF'
import re
from importlib import metadata

ROOTS = ["deepspeed"]
# on the GPU image already (torch and what it needs, the Hugging Face stack, DeepSpeed's small helpers)
SKIP = {"torch", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec",
        "typing-extensions", "setuptools", "ray", "mlflow", "transformers", "tokenizers", "safetensors",
        "huggingface-hub", "numpy", "pyyaml", "einops", "msgpack", "ninja", "packaging", "psutil", "py-cpuinfo",
        "tqdm"}

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

seen, todo = {}, [norm(r) for r in ROOTS]
while todo:
    name = todo.pop()
    if name in seen or name in SKIP or name.startswith("nvidia-"):
        continue
    dist = metadata.distribution(name)
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        if ";" in req:  # environment markers: Linux, CPython 3.10+
            marker = req.split(";", 1)[1]
            if any(bad in marker for bad in ("win32", "darwin", "python_version < \"3.", "platform_system == \"Windows\"")):
                continue
        dep = norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        try:
            metadata.distribution(dep)
        except metadata.PackageNotFoundError:
            continue  # a marker-only dependency this venv did not need
        todo.append(dep)
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
EOF
echo "== $(wc -l < "$OUT.tmp/requirements.txt") distributions for CPython $TARGET_PY on x86_64 Linux"

DS=$(grep '^deepspeed==' "$OUT.tmp/requirements.txt")
grep -v '^deepspeed==' "$OUT.tmp/requirements.txt" > "$OUT.tmp/binary.txt"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    "${PLATFORMS[@]}" -d "$OUT.tmp" -r "$OUT.tmp/binary.txt"
# DeepSpeed is an sdist: build a pure-Python wheel with every op left to just-in-time (none needed)
DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT.tmp" "$DS"

size_kib=$(du -sk --exclude='*.txt' "$OUT.tmp" | cut -f1)
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "error: the bundle is $((size_kib / 1024)) MiB, over $LIMIT_MIB MiB; see $OUT.tmp/requirements.txt" >&2
    exit 1
fi
rm -f "$OUT.tmp/binary.txt"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"  # complete or absent: never a half-filled bundle
echo "== $OUT: $(ls "$OUT"/*.whl | wc -l) wheels, $((size_kib / 1024)) MiB"
