# Trident: `make demo` runs the main job, `make test` runs every check CI runs.
# Both set up what they need first (libtorch from PyPI, once).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build demo test lint fixtures clean-libtorch

## Install libtorch (pinned PyPI wheel) into .libtorch when missing.
setup:
	@scripts/setup-libtorch.sh

## Build the trident binary (release).
build: setup
	$(CARGO) build --release --bin trident

## NER and sentiment over the sample news article in examples/.
demo: build
	@scripts/demo.sh target/release/trident

## Format, lint (warnings are errors) and run every test.
test: setup lint
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Regenerate the golden fixtures in weights/ (developers only: needs Python transformers).
fixtures:
	scripts/fixtures.sh
