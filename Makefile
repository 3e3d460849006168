# Two commands do all the set-up (see README): `make demo` and `make test`.
# Each creates the virtual environment if needed, installs torch==2.13.0 first (the CPU wheel; an
# unpinned torch would pull several GB of CUDA packages), then the package with what it needs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test warmup lint typecheck bench clean

demo: $(VENV)/.stamp-demo
	$(BIN)/placement demo

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest

lint: typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The top folders install as moe_placement.<folder> (see pyproject); mypy cannot follow that mapping, so
# the folders are linked under their import names first and checked there.
typecheck: $(VENV)/.stamp-test
	rm -rf build/typecheck && mkdir -p build/typecheck/moe_placement
	ln -s $(CURDIR)/placement/*.py $(CURDIR)/placement/py.typed build/typecheck/moe_placement/
	for d in traces solvers simulator executor pipeline reports cli; do \
	  ln -s $(CURDIR)/$$d build/typecheck/moe_placement/$$d; done
	$(BIN)/mypy

# Compile the simulator's numba kernels now, on every CPU, instead of at the first `placement simulate`
# (the install stamps below run it once; again after a change to the kernels, or else the first run does).
warmup: $(VENV)/.stamp-demo
	$(BIN)/python -m moe_placement.simulator.warmup

bench: $(VENV)/.stamp-test
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.stamp-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[capture]"
	$(BIN)/python -m moe_placement.simulator.warmup || echo "note: kernels not compiled now: the first simulate will"
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[capture,executor,dev]"
	$(BIN)/python -m moe_placement.simulator.warmup || echo "note: kernels not compiled now: the first simulate will"
	@# nothing is installed outside .venv: the report rendering test needs Chromium on the PATH and
	@# skips without it (README, Development, says how to enable it)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  echo "note: chromium not on the PATH: the report rendering test will be skipped"
	touch $@

clean:
	rm -rf $(VENV) demo-out build *.egg-info
