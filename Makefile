# One command each, from a fresh clone: make test, make demo, make bench, make lint.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard native/*.pyx native/*.c native/*.h)

.PHONY: install test test-pure bench lint demo soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Rebuilt whenever the build inputs change, so a stale extension never runs.
$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q -e '.[test,lint]'
	@touch $(STAMP)

install: $(STAMP)

# The miner, chain and network suites with the native extension hidden
# (VOTECHAIN_PURE_PYTHON=1), as msgpack runs its suite twice; then everything.
test: $(STAMP)
	$(MAKE) --no-print-directory test-pure
	$(PY) -m pytest -q -p no:cacheprovider -m "not soak" tests

PURE_SUITES := tests/test_mining.py tests/test_pool.py tests/test_block.py tests/test_chain.py \
	tests/test_rules.py tests/test_network.py tests/test_pure_install.py
test-pure: $(STAMP)
	VOTECHAIN_PURE_PYTHON=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_SUITES)

bench: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy benchmarks  # apart: its conftest.py would clash with tests/conftest.py
	$(VENV)/bin/lint-imports  # the layers contract in pyproject.toml

demo: $(STAMP)
	$(VENV)/bin/votechain demo

soak: $(STAMP)
	$(PY) -m pytest -q -s -p no:cacheprovider tests/soak -m soak

clean:
	rm -rf build $(VENV) src/*.egg-info native/_native.c src/votechain/*.so .import_linter_cache
