#!/usr/bin/env bash
# Peak memory of loading a checkpoint and generating one token, against the size of its weights.
#
#   scripts/bench/load_rss.sh MODEL_DIR DTYPE [BINARY]
#
# Runs `BINARY generate --model MODEL_DIR --dtype DTYPE --max-new-tokens 0 "Hello"` (load the model,
# tokenize, run nothing) three times under GNU time (`/usr/bin/time -v`; the Debian package `time` is
# installed with apt-get when missing), and the same with the tiny fixture weights/gpt2-tiny (the
# process without weights: libtorch, tokenizer). Prints the median "Maximum resident set size" of
# each, the size of MODEL_DIR's *.safetensors files, and the ratios of the whole process and of the
# load alone (RSS − baseline) to the file. MB = 10^6 bytes (time(1) reports KiB, converted here).
# MAX_NEW_TOKENS=N in the environment runs N generation steps instead of 0.
# BINARY defaults to target/release/trident of this repository.
# Example: scripts/bench/load_rss.sh .bench/models/gpt2-bf16 bf16
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUNS=3

usage() { echo "usage: $0 MODEL_DIR DTYPE [BINARY]" >&2; exit 2; }
if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; fi
MODEL_DIR="$1"
DTYPE="$2"
BINARY="${3:-$ROOT/target/release/trident}"

[ -d "$MODEL_DIR" ] || { echo "load_rss: $MODEL_DIR is not a directory" >&2; exit 1; }
[ -x "$BINARY" ] || { echo "load_rss: $BINARY is not an executable (build it: cargo build --release)" >&2; exit 1; }

TIME=/usr/bin/time
if [ ! -x "$TIME" ]; then
    echo "load_rss: $TIME is missing; installing the Debian package 'time'" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y time >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y time >&2; }
fi

shopt -s nullglob
FILES=("$MODEL_DIR"/*.safetensors)
shopt -u nullglob
[ ${#FILES[@]} -gt 0 ] || { echo "load_rss: no *.safetensors in $MODEL_DIR" >&2; exit 1; }
FILE_BYTES=0
for f in "${FILES[@]}"; do
    FILE_BYTES=$((FILE_BYTES + $(stat -c %s "$f")))
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# median_rss DIR: the median peak RSS (KiB) of RUNS runs with the weights of DIR.
median_rss() {
    local dir="$1" kib i
    local runs=()
    for i in $(seq 1 "$RUNS"); do
        if ! "$TIME" -v -o "$WORK/time.$i" "$BINARY" generate --model "$dir" --dtype "$DTYPE" \
            --max-new-tokens "${MAX_NEW_TOKENS:-0}" "Hello" > "$WORK/out.$i" 2> "$WORK/err.$i"; then
            echo "load_rss: run $i with $dir failed:" >&2
            cat "$WORK/err.$i" "$WORK/time.$i" >&2
            exit 1
        fi
        kib="$(awk -F': *' '/Maximum resident set size/ {print $2}' "$WORK/time.$i")"
        [ -n "$kib" ] || { echo "load_rss: no 'Maximum resident set size' in the output of time:" >&2; cat "$WORK/time.$i" >&2; exit 1; }
        runs+=("$kib")
    done
    echo "runs ($dir, KiB): ${runs[*]}" >&2
    printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}

MEDIAN_KIB="$(median_rss "$MODEL_DIR")"
BASE_KIB="$(median_rss "$ROOT/weights/gpt2-tiny")"
awk -v kib="$MEDIAN_KIB" -v base="$BASE_KIB" -v bytes="$FILE_BYTES" -v model="$MODEL_DIR" -v dtype="$DTYPE" 'BEGIN {
    rss = kib * 1024 / 1e6
    baseline = base * 1024 / 1e6
    size = bytes / 1e6
    printf "model: %s  dtype: %s\n", model, dtype
    printf "median max RSS: %.1f MB; without weights (weights/gpt2-tiny): %.1f MB\n", rss, baseline
    printf "safetensors size: %.1f MB (%.0f bytes)\n", size, bytes
    printf "whole process / file: %.2f\n", rss / size
    printf "load (RSS - baseline) / file: %.2f\n", (rss - baseline) / size
}'
