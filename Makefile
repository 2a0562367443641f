# Two commands on a fresh machine (Python 3.11+ and make): `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed
BENCH_STAMP := $(VENV)/.bench-installed
# The wheel of the working tree, unpacked: the one place `bpx_worker` exists as a single tree (see
# devtools/package.py), so mypy and import-linter read what ships.
LINT_TREE := .lint-build

.PHONY: run test unit chaos-large bench bench-quick bench-payout bench-pending bench-charts sandbox worker flower clean lint lint-ruff lint-types lint-imports lint-cycles lint-tree

# The first install takes a minute or two: pip shows each package as it comes (no --quiet).
$(STAMP): pyproject.toml
	@echo "installing the project and its dependencies into $(VENV) (the first time takes a minute or two)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e ".[test,dev,flower]"
	touch $(STAMP)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,dev,flower,bench]"
	touch $(BENCH_STAMP)

$(LINT_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,dev,flower,lint]"
	touch $(LINT_STAMP)

## run: start a private Redis, the sandbox and a worker; submit a few withdrawals; shut down
run: $(STAMP)
	$(BIN)/python -m devtools.demo

## test: the whole suite (unit, integration against real Redis/worker/sandbox, chaos)
test: $(STAMP)
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

## chaos-large: the chaos suite with larger settings, by hand
chaos-large: $(STAMP)
	CHAOS_JOBS=1000 CHAOS_KILLS=40 $(BIN)/python -m pytest tests/integration/test_chaos.py -s

sandbox: $(STAMP)
	$(BIN)/python -m devtools.sandbox

worker: $(STAMP)
	$(BIN)/bpx-worker worker

## flower: Flower on 127.0.0.1:5555; needs FLOWER_BASIC_AUTH=user:password (or: make flower FLOWER_ARGS=--generate-auth)
flower: $(STAMP)
	$(BIN)/bpx-worker flower $(FLOWER_ARGS)

## lint: ruff, mypy (strict on the Arazzo core, the engine and the job store), the import contracts and
## a list of import cycles. All of them run (make -k); the target fails if any of them fails.
lint:
	@$(MAKE) --no-print-directory -k lint-ruff lint-types lint-imports lint-cycles

lint-ruff: $(LINT_STAMP)
	$(BIN)/ruff check --output-format=concise .

lint-tree: $(LINT_STAMP)
	$(BIN)/python -m devtools.package tree $(LINT_TREE)

lint-types: lint-tree
	$(BIN)/python -m devtools.package mypy $(LINT_TREE) devtools tests benchmarks

lint-imports: lint-tree
	PYTHONPATH=$(LINT_TREE) $(BIN)/lint-imports --no-cache

lint-cycles: lint-tree
	$(BIN)/python -m devtools.package cycles $(LINT_TREE)

clean:
	rm -rf $(VENV) *.egg-info $(LINT_TREE) .mypy_cache .ruff_cache

## bench: the product against a bare Celery chain (A) and the in-process path (B) on a private stack,
## 2000 jobs; options through BENCH_ARGS (e.g. BENCH_ARGS="--latency-ms 100 --pool prefork --concurrency 2")
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

## bench-quick: the same with 200 jobs, in under a minute
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.bench --quick $(BENCH_ARGS)

## bench-payout: a 500-row payout run at the exchange's rate limit: requests per withdrawal, time against the limit
bench-payout: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.payout $(BENCH_ARGS)

## bench-pending: 1,000 / 3,000 / 10,000 withdrawals pending at the exchange (a long run, by hand)
bench-pending: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.pending --pending 1000,3000,10000 $(BENCH_ARGS)

## bench-charts: the PNG charts of docs/benchmarks.md from the documented results
bench-charts: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.charts
