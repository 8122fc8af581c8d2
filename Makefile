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
	touch $(STAMP)

venv: $(STAMP)

# The whole pipeline on the embedded synthetic default (a generated export; no private data).
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/clanet-store synth $(DEMO)/export --lines 4 --batches 2 --positions 2 --timepoints 4 --seed 0
	$(BIN)/clanet-store scan $(DEMO)/export --out $(DEMO)/manifest.parquet
	$(BIN)/clanet-store ingest $(DEMO)/export --store $(DEMO)/store
	$(BIN)/clanet-store encode --store $(DEMO)/store
	$(BIN)/clanet-store index --store $(DEMO)/store
	$(BIN)/clanet-store info --store $(DEMO)/store
	$(BIN)/clanet-store search --store $(DEMO)/store --patch-id \
		"$$($(BIN)/python -c 'from clanet_store.stores.patch_store import PatchStore; print(PatchStore("$(DEMO)/store").patches_table()["patch_id"].sort()[0])')" \
		-k 5 --other-batches --show $(DEMO)/gallery.png

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
