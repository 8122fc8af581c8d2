# Two set-up commands: `make demo` and `make test`. Both create or reuse .venv (Python >= 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-data

.PHONY: demo test lint bench venv clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "clanet-store needs Python >= 3.11 (found $(PYTHON))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Azurite, the Azure Blob Storage emulator of tests/test_object_store.py (its az:// tests).
	if command -v npm >/dev/null; then \
		npm install --silent --no-audit --no-fund --prefix $(VENV)/node azurite@3.37.0; \
	else echo "npm not found: the az:// tests will be skipped (and fail under CI=true)"; fi
	touch $(STAMP)

venv: $(STAMP)

# The whole pipeline on the embedded synthetic default (pipelines/demo.toml: a generated export,
# no private data): synth -> ingest -> ssl-train -> encode -> index -> train -> evaluate -> search
# -> report. Stages that are up to date are skipped on a second run; `make clean-demo` starts over.
demo: $(STAMP)
	$(BIN)/clanet-store demo --out $(DEMO)

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_scan.py

clean-demo:
	rm -rf $(DEMO)
