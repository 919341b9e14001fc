# The first two targets are the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check hil powercut powercut-selftest powercut-outbox \
	powercut-outbox-selftest bench fleet clean

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
	$(BIN)/ruff check agent hw_sim tests hil
	$(BIN)/ruff format --check agent hw_sim tests hil

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# The integration suite on real SocketCAN: vcan0 inside a User-Mode Linux kernel (or the
# host's own vcan0/can0, see hil/README.md). HIL_SUITE=1 makes tests/hil collect; a kernel
# that does not boot is a failure (exit 125), never a skip. Extra pytest arguments: HIL_ARGS.
hil: $(STAMP)
	HIL_SUITE=1 hil/run-in-uml.sh $(BIN)/pytest -p no:cacheprovider tests/hil $(HIL_ARGS)

# Power cuts end to end (issue 14): inside UML the real agent (connect-agent run) with its state
# on an ext4 image on a UML block device, the simulated car on vcan0, Mosquitto behind a frozen
# link; the car holds CONNECT, the LED frame shows calling, the power goes 0-50 ms later; the
# next boot, with a broker that answers, must deliver every such call. POWERCUT_SEED (1),
# POWERCUT_RUNS (20); about 4 minutes. See hil/README.md.
powercut: $(STAMP)
	$(BIN)/python hil/powercut_e2e.py

# The check can fail: the harness puts the agent's state on a tmpfs (POWERCUT_FAULT=tmpfs) or
# swallows its fsyncs (nosync); passes only if the power cuts then lose calls. A call that
# survived arrives within a second; the self-test waits 10 s for it, not 30.
powercut-selftest: $(STAMP)
	POWERCUT_FAULT=$${POWERCUT_FAULT:-tmpfs} POWERCUT_DELIVER_S=$${POWERCUT_DELIVER_S:-10} \
		$(BIN)/python hil/powercut_e2e.py --expect-failure

# Power cuts under the outbox alone: hil/powercut_writer.py stores calls through the Outbox as
# fast as it can and the UML kernel is SIGKILLed at random moments (adds, deletes, checkpoints).
# About 2 minutes.
powercut-outbox: $(STAMP)
	$(BIN)/python hil/powercut.py

# Its check can fail: the writer reports COMMITTED before Outbox.add (POWERCUT_FAULT=
# report-early, or sync-off); passes only if the power cuts then lose something.
powercut-outbox-selftest: $(STAMP)
	POWERCUT_FAULT=$${POWERCUT_FAULT:-sync-off} $(BIN)/python hil/powercut.py --expect-failure

# Benchmarks (issue 8): in-process on the virtual bus, then vcan0 under UML; prints a table,
# writes bench/results/. About 22 minutes on 2 cores (links and kernel TCP under netem
# included); BENCH_ARGS=--quick for a 7.5-minute smoke.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The fleet (issue 18): N lightweight simulated cars (hw_sim/fleet.py, default 1000) against
# Mosquitto and a 3-node NATS cluster on loopback; prints memory per session, reconnect time
# after a broker restart, a call storm's rate and the keep-alive's monthly cost, then kills
# cluster nodes with calls in flight. Last line `failover: K node kills, lost: L` (exit 1 when
# L > 0). FLEET_ARGS=--quick for a short storm, e.g. FLEET_ARGS='--cars 200 --kills 1'.
fleet: $(STAMP)
	$(BIN)/python -m bench.fleet $(FLEET_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
