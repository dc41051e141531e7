# The two commands of the README: `make demo` and `make test`. Each makes its own
# virtual environment in .venv and installs the project into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo

check: $(STAMP)
	$(BIN)/ruff check gateway simulators tests benchmarks
	$(BIN)/ruff format --check gateway simulators tests benchmarks
	$(BIN)/mypy

# In parallel: the tests mostly wait on brokers, sockets and simulated devices, so more workers
# than cores pay off. Workers are handed tests two at a time, slow ones first (tests/conftest.py).
# A run that collects no test exits 5, and so does make.
PYTEST_WORKERS ?= 4
pytest: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist load --maxschedchunk 2

test: check pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/durable_publish.py
	$(BIN)/python benchmarks/rfid_portal.py
	$(BIN)/python benchmarks/pass_latency.py
	$(BIN)/python benchmarks/agv_requests.py
	$(BIN)/python benchmarks/footprint.py
	$(BIN)/python benchmarks/hostile_input.py
	$(BIN)/python benchmarks/pallet_memory.py
	$(BIN)/python benchmarks/ops_surface.py
	$(BIN)/python benchmarks/handheld_ack.py
	$(BIN)/python benchmarks/zone_rules.py
	$(BIN)/python benchmarks/site_sizing.py
	$(BIN)/python benchmarks/guard.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
