# The first two targets are the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check hil bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hw-sim demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check agent hw_sim tests
	$(BIN)/ruff format --check agent hw_sim tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# The integration suite on real SocketCAN: vcan0 inside a User-Mode Linux kernel (or the
# host's own vcan0/can0, see hil/README.md). HIL_SUITE=1 makes tests/hil collect; a kernel
# that does not boot is a failure (exit 125), never a skip. Extra pytest arguments: HIL_ARGS.
hil: $(STAMP)
	HIL_SUITE=1 hil/run-in-uml.sh $(BIN)/pytest -p no:cacheprovider tests/hil $(HIL_ARGS)

# Benchmarks (issue 8): in-process on the virtual bus, then vcan0 under UML; prints a table,
# writes bench/results/. About 9 minutes on 2 cores; BENCH_ARGS=--quick for a 2-minute smoke.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
