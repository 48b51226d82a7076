# One place for every developer and CI command. Each target creates .venv from python3 first,
# installing exactly what requirements.lock pins (with hashes), then the project itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
# APT=no: never install Debian packages; the tests that need them skip (and fail under CI=true).
APT ?= yes
APT_GET := apt-get -o DPkg::Lock::Timeout=600 -qq

.PHONY: help demo test check lint format typecheck layers unit test-long bench clean tools lazyfs \
	lock dist fix openapi test-systemd python3-venv test-windows

help:
	@echo "make demo      - the sandbox cloud, the agent and a selling till, through an outage and a 429 storm"
	@echo "make test      - every check: format, lint, types, import layers, tests"
	@echo "make bench     - the benchmarks of tests/perf (TARGETS.md), results in build/bench/"
	@echo "make test-windows - the Windows path under Wine: service, DPAPI, PyInstaller, the MSI"
	@echo "make test-long - the long reliability runs (200 crash cycles, 200 power cuts, >10,000 fuzzed requests)"
	@echo "make test-systemd - the installed unit under real systemd in a container (root, ~1 min)"
	@echo "make lock      - resolve pyproject.toml's ranges again into requirements.lock (needs PyPI)"
	@echo "make dist      - the wheel and sdist in dist/, versioned from git tags"

# A fresh venv whenever pyproject.toml or the lock changes, so nothing unlocked lingers in it.
# --no-deps: the lock lists every package, transitive ones included; pip check proves it.
$(STAMP): pyproject.toml $(LOCK)
	@echo "make: creating $(VENV) from $(LOCK) (every package pinned, hashes checked)"
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
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

# Debian packages some tests need, as command:package. Installed (root with apt-get only) after
# saying so; anywhere else the tests that need them skip with the reason, and fail under CI=true.
#   chromium         the status page rendered in a real browser (tests/test_status_page.py)
#   systemd-analyze  the unit file verified and its hardening scored (tests/service/test_unit.py)
#   wixl, msiinfo    the Windows MSI built and read back (tests/installer/test_msi.py)
#   faketime         wall-clock jumps under libfaketime (tests/test_clock_jumps.py)
TOOLS := chromium:chromium systemd-analyze:systemd wixl:wixl msiinfo:msitools faketime:faketime

tools:
	@missing=""; for pair in $(TOOLS); do command -v "$${pair%%:*}" >/dev/null 2>&1 \
	  || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$(APT)" = yes ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make: installing Debian packages for the tests:$$missing (apt-get as root; APT=no to skip)"; \
	  { $(APT_GET) update && $(APT_GET) install -y $$missing; } >/dev/null \
	    || echo "make: apt-get could not install$$missing: the tests that need them will skip"; \
	else \
	  echo "make: not installed:$$missing (needs root with apt-get, and APT=yes): the tests that need them will skip"; \
	fi

# The power-loss tests run the agent on LazyFS, a FUSE file system that drops whatever was not
# fsync'd on command. Built here from the pinned sources beside LAZYFS_BUILD, with no network,
# into build/lazyfs (about a minute, once; make clean removes it); as root the script installs
# its Debian build packages itself (g++, cmake, pkg-config, libfuse3-dev, fuse3).
LAZYFS_BUILD ?= ../shared/tools/lazyfs/build.sh
LAZYFS_BIN := build/lazyfs/lazyfs/lazyfs/build/lazyfs
lazyfs:
	@if [ -x $(LAZYFS_BIN) ]; then :; \
	elif [ ! -x "$(LAZYFS_BUILD)" ]; then echo "no $(LAZYFS_BUILD): the power-loss tests will skip"; \
	else echo "make: building LazyFS for the power-loss tests with $(LAZYFS_BUILD) (about a minute)"; \
	  mkdir -p build && "$(LAZYFS_BUILD)" build/lazyfs >build/lazyfs.log 2>&1 \
	  || echo "LazyFS did not build (build/lazyfs.log): the power-loss tests will skip"; fi

# The real-systemd test installs the agent the documented way, into a venv made with Debian's
# /usr/bin/python3; that needs python3-venv (ensurepip). Installed like the tools above.
python3-venv:
	@/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 && exit 0; \
	if [ "$(APT)" = yes ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make: installing Debian package python3-venv for make test-systemd (apt-get as root; APT=no to skip)"; \
	  { $(APT_GET) update && $(APT_GET) install -y python3-venv; } >/dev/null \
	    || echo "make: apt-get could not install python3-venv: the real-systemd tests will skip"; \
	else \
	  echo "make: not installed: python3-venv (needs root with apt-get, and APT=yes): the real-systemd tests will skip"; \
	fi

# The unit under real systemd: PID 1 of a throw-away container made from this machine's root
# (util-linux unshare, no systemd-nspawn). Root only; under CI=true a missing tool fails it.
test-systemd: $(STAMP) tools python3-venv
	$(BIN)/pytest -q -m systemd -p no:randomly tests/systemd

unit: $(STAMP) tools lazyfs
	$(BIN)/pytest -q

# The Windows path executed under Wine 8.0 (tests/wine; docs/install.md, "What ran, and where"):
# Debian's Wine, mingw-w64 (two shims) and wixl/msitools, installed like `tools`. The Windows
# Python, its wheels and the shims are cached in build/wine (`make clean` removes it). Under
# CI=true a missing package fails the run instead of skipping it.
WINE_TOOLS := wine:wine wineserver:wine x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64 wixl:wixl \
	msibuild:msitools msiinfo:msitools

test-windows: $(STAMP)
	@$(MAKE) --no-print-directory tools TOOLS="$(WINE_TOOLS)"
	$(BIN)/pytest -q -p no:randomly -rfEs --wine --timeout 1800 tests/wine

test-long: $(STAMP) tools lazyfs
	FUZZ_EXAMPLES=800 OUTBOX_MODEL_EXAMPLES=500 $(BIN)/pytest -q -m "not perf"

bench: $(STAMP)
	$(BIN)/pytest -q -m perf -p no:randomly tests/perf -s

# Resolve the ranges in pyproject.toml again, for every platform (pywin32 for Windows included),
# with the hash of every file; then a new venv from it. Commit requirements.lock with the change.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --generate-hashes \
	  --python-version 3.11 --custom-compile-command "make lock" --quiet -o $(LOCK)

# The wheel and sdist, offline: the build backend comes from the lock, the version from git tags.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	@ls -1 dist

# docs/openapi.json from the shapes in agent/api/schemas.py (tests/test_openapi.py keeps it fresh).
openapi: $(STAMP)
	$(BIN)/till-agent openapi > docs/openapi.json

fix: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache agent/_version.py
