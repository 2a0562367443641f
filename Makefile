# Two commands on a fresh machine (Python 3.11+ and make): `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit chaos-large bench sandbox worker flower clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,dev,flower]"
	touch $(STAMP)

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

flower: $(STAMP)
	$(BIN)/celery -A bpx_worker.tasks.app flower

clean:
	rm -rf $(VENV) *.egg-info

## bench: document loading, the in-process baseline and the Celery path
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_workflow.py
