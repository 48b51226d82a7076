# One place for every developer and CI command. Each target creates .venv from python3 first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help demo test check lint format typecheck layers unit test-long bench clean browser \
	systemd-tools msi-tools faketime lazyfs

help:
	@echo "make demo   - the sandbox cloud, the agent and a selling till, through an outage and a 429 storm"
	@echo "make test   - every check: format, lint, types, import layers, tests"
	@echo "make bench  - the benchmarks of tests/perf (TARGETS.md), results in build/bench/"
	@echo "make test-long - the long reliability runs (200 crash cycles, 200 power cuts, >10,000 fuzzed requests)"

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/till-agent demo

test: check

check: $(STAMP) format lint typecheck layers unit

format: $(STAMP)
	$(BIN)/ruff format --check .

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

# The status page is tested in Debian's Chromium; install it where we can (root, apt), else the
# browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "chromium not installed: the browser test will skip"; }

# The systemd unit is checked with systemd-analyze verify/security; install it where we can.
systemd-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq systemd) >/dev/null 2>&1 \
	  || echo "systemd-analyze not installed: the unit checks will skip"; }

# The MSI is built with wixl and read back with msitools (msiinfo, msiextract); install them
# where we can, else the MSI tests skip.
msi-tools:
	@command -v wixl >/dev/null 2>&1 && command -v msiinfo >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq wixl msitools) \
	  >/dev/null 2>&1 || echo "wixl/msitools not installed: the MSI tests will skip"; }

# The clock-jump tests run the agent under libfaketime (Debian's faketime); install it where we
# can (root, apt), else those tests skip and say why.
faketime:
	@command -v faketime >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq faketime) >/dev/null 2>&1 \
	  || echo "libfaketime not installed: the clock-jump tests will skip"; }

# The power-loss tests run the agent on LazyFS, a FUSE file system that drops whatever was not
# fsync'd on command. Built here from the pinned sources beside LAZYFS_BUILD, with no network,
# into build/lazyfs (about a minute, once; make clean removes it); as root the script installs
# its Debian build packages itself (g++, cmake, pkg-config, libfuse3-dev, fuse3).
LAZYFS_BUILD ?= ../shared/tools/lazyfs/build.sh
LAZYFS_BIN := build/lazyfs/lazyfs/lazyfs/build/lazyfs
lazyfs:
	@if [ -x $(LAZYFS_BIN) ]; then :; \
	elif [ ! -x "$(LAZYFS_BUILD)" ]; then echo "no $(LAZYFS_BUILD): the power-loss tests will skip"; \
	else echo "building LazyFS for the power-loss tests with $(LAZYFS_BUILD) (about a minute)"; \
	  mkdir -p build && "$(LAZYFS_BUILD)" build/lazyfs >build/lazyfs.log 2>&1 \
	  || echo "LazyFS did not build (build/lazyfs.log): the power-loss tests will skip"; fi

unit: $(STAMP) browser systemd-tools msi-tools faketime lazyfs
	$(BIN)/pytest -q

test-long: $(STAMP) lazyfs
	FUZZ_EXAMPLES=800 OUTBOX_MODEL_EXAMPLES=500 $(BIN)/pytest -q -m "not perf"

bench: $(STAMP)
	$(BIN)/pytest -q -m perf -p no:randomly tests/perf -s

fix: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache
