# The one entry point for the README, CI and developers.
# `make demo` and `make test` create the virtualenv and install the locked dependencies first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup bubblewrap demo serve test test-long lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v bwrap >/dev/null 2>&1 || $(MAKE) --no-print-directory bubblewrap
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	@$(BIN)/uv sync --frozen --inexact --all-extras --quiet
	@touch $@

# Jobs run in a bubblewrap sandbox. As root with apt-get it is installed here; otherwise say how.
bubblewrap:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bubblewrap (jobs run in its sandbox)"; \
	  apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq bubblewrap; }; \
	else \
	  echo "stitchwork runs every job in a bubblewrap sandbox: install it with" \
	    "'sudo apt-get install bubblewrap' (Fedora: dnf, Arch: pacman -S bubblewrap)"; \
	fi

demo: $(STAMP)  ## the main job: a plan of agent tasks on a sample repository, shown live
	$(BIN)/stitchwork demo

serve: $(STAMP)
	$(BIN)/stitchwork serve

test: lint typecheck pytest  ## what CI runs

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected no test: for this project that is a broken run, not a pass.
pytest: $(STAMP)
	@$(BIN)/pytest -m "not chaos" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run"; exit 1; fi; \
	exit $$rc

test-long: $(STAMP)  ## the long suites (crash harness, chaos): minutes each; CI runs them too
	@$(BIN)/pytest -m chaos $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run"; exit 1; fi; \
	exit $$rc

bench: $(STAMP)
	$(BIN)/python bench/queue_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
