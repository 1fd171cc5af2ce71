#!/bin/sh
# What Spark's RDD.pipe runs once per partition: JSON Lines articles ({"id", "text"}) on stdin,
# one {"id", "ner", "sentiment"} line per article on stdout, in input order. No Python: the
# JVM writes the partition to this shell, `trident ner` and `trident classify` (each
# `--format jsonl --input -`) answer one line per input, and awk pairs the two lines of each
# id. An input that failed gives {"id", "error"}. Any other failure (a killed trident, a
# row missing) exits non-zero, so Spark fails the task and retries it elsewhere.
#
# Settings from the environment (spark.executorEnv.*): TRIDENT_BIN, TRIDENT_NER_MODEL,
# TRIDENT_SENTIMENT_MODEL, TRIDENT_THREADS (1), TRIDENT_BATCH (16).
set -eu
bin="${TRIDENT_BIN:-trident}"
threads="${TRIDENT_THREADS:-1}"
batch="${TRIDENT_BATCH:-16}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/trident-pipe.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/in"
# Exit code 1 means some inputs failed (they are {"id", "error"} rows); 2 and signals are fatal.
run() {
    task=$1 model=$2 out=$3
    rc=0
    "$bin" -q --threads "$threads" "$task" --model "$model" --batch-size "$batch" \
        --format jsonl --input - --input-format jsonl < "$tmp/in" > "$out" || rc=$?
    [ "$rc" -le 1 ] || { echo "trident-pipe: trident $task exited with $rc" >&2; exit "$rc"; }
}
run ner "${TRIDENT_NER_MODEL:?}" "$tmp/ner"
run classify "${TRIDENT_SENTIMENT_MODEL:?}" "$tmp/sentiment"

# JSON never holds a raw tab, so tab-separated pairs are safe; the first ',"result":' of a
# row follows its id (a quote inside a JSON string is escaped, so the id cannot contain it).
n_in=$(grep -c '' "$tmp/in" || true)
paste "$tmp/ner" "$tmp/sentiment" | awk -F '\t' -v expected="$n_in" '
    {
        ner = $1; sen = $2; key = ",\"result\":"
        i = index(ner, key); j = index(sen, key)
        if (i > 0 && j > 0) {
            if (substr(ner, 1, i - 1) != substr(sen, 1, j - 1)) { print "trident-pipe: ids out of step at row " NR > "/dev/stderr"; exit 3 }
            print substr(ner, 1, i - 1) ",\"ner\":" substr(ner, i + 10, length(ner) - i - 10) ",\"sentiment\":" substr(sen, j + 10)
        } else if (i == 0) {
            print ner
        } else {
            print sen
        }
        rows++
    }
    END { if (rows != expected) { print "trident-pipe: " rows " rows for " expected " inputs" > "/dev/stderr"; exit 4 } }'
