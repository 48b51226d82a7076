# One place for every developer and CI command. Each target creates .venv from python3 first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help demo test check lint format typecheck layers unit test-long bench clean browser \
	systemd-tools msi-tools faketime test-systemd python3-venv

help:
	@echo "make demo   - the sandbox cloud, the agent and a selling till, through an outage and a 429 storm"
	@echo "make test   - every check: format, lint, types, import layers, tests"
	@echo "make bench  - the benchmarks of tests/perf (TARGETS.md), results in build/bench/"
	@echo "make test-long - the long reliability runs (200 crash cycles, >10,000 fuzzed requests)"
	@echo "make test-systemd - the installed unit under real systemd in a container (root, ~1 min)"

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

# The real-systemd test installs the agent the documented way, into a venv made with Debian's
# /usr/bin/python3; that needs python3-venv (ensurepip).
python3-venv:
	@/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && echo "installing python3-venv (apt) for make test-systemd" \
	  && (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null 2>&1 \
	  || echo "python3-venv not installed: the real-systemd tests will fail under CI=true, else skip"; }

# The unit under real systemd: PID 1 of a throw-away container made from this machine's root
# (util-linux unshare, no systemd-nspawn). Root only; under CI=true a missing tool fails it.
test-systemd: $(STAMP) systemd-tools python3-venv
	$(BIN)/pytest -q -m systemd -p no:randomly tests/systemd

unit: $(STAMP) browser systemd-tools msi-tools faketime
	$(BIN)/pytest -q

test-long: $(STAMP)
	FUZZ_EXAMPLES=800 OUTBOX_MODEL_EXAMPLES=500 $(BIN)/pytest -q -m "not perf"

bench: $(STAMP)
	$(BIN)/pytest -q -m perf -p no:randomly tests/perf -s

fix: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache
