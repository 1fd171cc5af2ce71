#!/usr/bin/env bash
# How long a `trident explain` page takes to open: for each page, its size, the milliseconds
# from the start of the navigation until its script has read the data and drawn every map
# (the page writes them into body[data-loaded-ms]), and how long headless Chromium ran
# (--dump-dom: start, load, and writing the DOM back out). Chromium: Debian's
# chromium-headless-shell, or $TRIDENT_CHROMIUM.
#
#   scripts/explain-load-time.sh [path/to/trident]        # all-MiniLM-L6-v2 at 256 and 512 tokens
#   scripts/explain-load-time.sh --pages a.html b.html    # pages made already
#
# The text is examples/news_article.txt five times. all-MiniLM-L6-v2 (6 layers × 12 heads)
# reads 256 tokens as sentence-transformers configures it; for 512 the script runs a copy whose
# sentence_bert_config.json says 512 (its BERT has 512 positions), the same weights linked.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHROMIUM="${TRIDENT_CHROMIUM:-$(command -v chromium-headless-shell || command -v chromium)}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

time_page() {  # page
    local start end dom ms
    start=$(date +%s.%N)
    dom="$("$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --dump-dom "file://$1" 2>/dev/null)"
    end=$(date +%s.%N)
    ms="$(grep -o 'data-loaded-ms="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || echo '?')"
    printf '%-40s %8.1f MB   drawn after %6s ms   Chromium %6.1f s\n' "$(basename "$1")" \
        "$(echo "$(stat -c %s "$1") / 1000000" | bc -l)" "$ms" "$(echo "$end - $start" | bc -l)"
}

if [ "${1:-}" = "--pages" ]; then
    shift
    for page in "$@"; do time_page "$(realpath "$page")"; done
    exit
fi
TRIDENT="${1:-$ROOT/target/debug/trident}"
MODEL="$ROOT/weights/all-MiniLM-L6-v2"
TEXT="$(for _ in 1 2 3 4 5; do cat "$ROOT/examples/news_article.txt"; done | tr '\n' ' ')"
mkdir "$TMP/minilm-512"
for f in "$MODEL"/*; do ln -s "$f" "$TMP/minilm-512/"; done
rm "$TMP/minilm-512/sentence_bert_config.json"
echo '{"max_seq_length": 512, "do_lower_case": false}' >"$TMP/minilm-512/sentence_bert_config.json"
"$TRIDENT" -q explain embed --device cpu --max-tokens 256 -m "$MODEL" -o "$TMP/minilm-256.html" "$TEXT"
"$TRIDENT" -q explain embed --device cpu --max-tokens 512 -m "$TMP/minilm-512" -o "$TMP/minilm-512.html" "$TEXT"
time_page "$TMP/minilm-256.html"
time_page "$TMP/minilm-512.html"
