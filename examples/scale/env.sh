# shellcheck shell=bash
# Shared settings of the scale-out demos; sourced by the scripts in examples/ and deploy/lb/.
# Every setting can be overridden from the environment, e.g. to run the real models:
#   TRIDENT_NER_MODEL=dslim/bert-base-NER \
#   TRIDENT_SENTIMENT_MODEL=distilbert/distilbert-base-uncased-finetuned-sst-2-english make scale-demo

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
export ROOT
# The binary every worker runs (absolute: workers start in their own directories).
export TRIDENT_BIN="${TRIDENT_BIN:-$ROOT/target/release/trident}"
# Small fixture checkpoints by default, so the demos run in minutes on two cores.
export TRIDENT_NER_MODEL="${TRIDENT_NER_MODEL:-$ROOT/weights/bert-tiny-ner}"
export TRIDENT_SENTIMENT_MODEL="${TRIDENT_SENTIMENT_MODEL:-$ROOT/weights/distilbert-tiny-sst2}"
# libtorch threads per Trident process. One per process: the workers are the parallelism,
# and on a shared machine two OpenMP threads per process fighting for the same cores ran
# 13x slower than one (measured here, see BENCHMARKS.md).
export TRIDENT_THREADS="${TRIDENT_THREADS:-1}"
# Bit-identical results run to run (the library's product everywhere), so a retried task
# gives exactly what the lost one would have.
export TRIDENT_KERNELS="${TRIDENT_KERNELS:-fixed}"
export SCALE_DIR="${SCALE_DIR:-$ROOT/.scale}"
export SCALE_VENV="${SCALE_VENV:-$ROOT/.venv-scale}"
export SCALE_PY="$SCALE_VENV/bin/python"
export ARTICLES="${ARTICLES:-$SCALE_DIR/articles.jsonl}"
export ARTICLE_COUNT="${ARTICLE_COUNT:-3000}"
# Where the figures of every run are collected (one JSON object per line).
export FIGURES="${FIGURES:-$SCALE_DIR/figures.jsonl}"

# Make the input once (deterministic).
scale_articles() {
    mkdir -p "$SCALE_DIR"
    if [ ! -s "$ARTICLES" ] || [ "$(wc -l < "$ARTICLES")" -ne "$ARTICLE_COUNT" ]; then
        python3 "$ROOT/examples/scale/make_articles.py" --count "$ARTICLE_COUNT" --output "$ARTICLES"
    fi
}

# The 1-minute load average, recorded beside every figure (the machine is shared).
scale_load() { cut -d' ' -f1 /proc/loadavg; }

# The engines run in a network namespace of their own that has only a loopback interface
# (when root and iproute2 are there): Ray advertises the address it finds "from the
# perspective" of a public host unless it has none, and a namespace with only 127.0.0.1
# guarantees that no cluster traffic uses any other address. Without it they run as they are.
export SCALE_NETNS="${SCALE_NETNS:-trident-scale}"
netns_up() {
    if [ "$(id -u)" = 0 ] && command -v ip > /dev/null && [ "${SCALE_NO_NETNS:-}" != 1 ]; then
        if ! ip netns list 2> /dev/null | grep -qw "$SCALE_NETNS"; then
            ip netns add "$SCALE_NETNS" && ip -n "$SCALE_NETNS" link set lo up
        fi
    fi
}
netns_down() {
    if ip netns list 2> /dev/null | grep -qw "$SCALE_NETNS"; then ip netns del "$SCALE_NETNS"; fi
}
in_netns() {
    if ip netns list 2> /dev/null | grep -qw "$SCALE_NETNS"; then
        ip netns exec "$SCALE_NETNS" "$@"
    else
        "$@"
    fi
}
