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

# The whole suite twice, as msgpack's runs: with the native extension, then pure
# (VOTECHAIN_PURE_PYTHON=1 hides it), where only what tests the extension itself
# skips, each skip saying why (tests/framework/backends.py). Soak tests run in
# `make soak` only.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -m "not soak"
test: $(STAMP)
	$(PYTEST) tests
	$(MAKE) --no-print-directory test-pure

test-pure: $(STAMP)
	VOTECHAIN_PURE_PYTHON=1 $(PYTEST) tests

bench: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	MYPYPATH=tests $(VENV)/bin/mypy benchmarks  # apart: its conftest.py would clash with tests/conftest.py; tests/ for tests/framework
	$(VENV)/bin/lint-imports  # the layers contract in pyproject.toml

demo: $(STAMP)
	$(VENV)/bin/votechain demo

soak: $(STAMP)
	$(PY) -m pytest -q -s -p no:cacheprovider tests/soak -m soak

clean:
	rm -rf build $(VENV) src/*.egg-info native/_native.c src/votechain/*.so .import_linter_cache
