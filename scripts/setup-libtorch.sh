#!/usr/bin/env bash
# Install libtorch for building Trident: the one place its version is pinned.
#
# libtorch comes from the PyPI wheel torch==2.13.0 (a CUDA build that runs on CPU). A CPU
# binary keeps only libtorch_cpu.so and libc10.so, which need just the CUDA runtime and CUPTI
# libraries, so those two small wheels are installed beside it instead of all of torch's
# dependencies (about 1.2 GB instead of 4.7 GB). Idempotent: does nothing when present.
#
# TRIDENT_TORCH_FULL=1 installs torch with all its CUDA dependencies (for `--features cuda`).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
DEST=.libtorch
STAMP="$DEST/.trident-torch-$TORCH_VERSION${TRIDENT_TORCH_FULL:+-full}"
if [ -f "$STAMP" ] && [ -f "$DEST/torch/lib/libtorch_cpu.so" ]; then
  exit 0
fi
echo "Installing libtorch $TORCH_VERSION from PyPI into $DEST (once; about 1.2 GB)..." >&2
PY=${PYTHON:-python3}
rm -rf "$DEST"
if [ -n "${TRIDENT_TORCH_FULL:-}" ]; then
  "$PY" -m pip install --quiet --disable-pip-version-check --target "$DEST" "torch==$TORCH_VERSION"
else
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$DEST" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi
touch "$STAMP"
