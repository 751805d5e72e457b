# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make test` installs the wheel it builds here, recreated each run, as a user would.
WHEEL_DIST := build/dist
WHEEL_VENV := build/wheel-venv

.PHONY: system-deps demo test lint typecheck wheel-check dist unit fuzz bench clean screenshots

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ztpki demo $(DEMO_ARGS)

# System tools the tests drive as real third parties (curl, openssl; nginx as the TLS proxy;
# PostgreSQL, whose throwaway clusters the tests start: tests/support/postgres.py; systemd's
# checkers for deploy/; chromium and chromium-driver for the console's browser tests).
# nginx-light is Debian 12's small build; newer releases ship only `nginx`. RUNLEVEL=1 keeps
# the packages from starting a system nginx, and create_main_cluster = false keeps Debian's
# PostgreSQL package from creating (and starting) a system cluster: the tests run their own.
system-deps:
	@command -v curl >/dev/null && command -v openssl >/dev/null && \
	  PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null && \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -q && apt-get install -y -q curl openssl && \
	   (RUNLEVEL=1 apt-get install -y -q nginx-light || RUNLEVEL=1 apt-get install -y -q nginx) && \
	   mkdir -p /etc/postgresql-common && \
	   (grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || \
	    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf) && \
	   RUNLEVEL=1 apt-get install -y -q postgresql)
	@command -v systemd-analyze >/dev/null || (apt-get update -q && apt-get install -y -q systemd)
	@# The web console's browser tests: Debian's headless Chromium and its matching driver.
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver)
	@# Operators' client certificates in the browser tests: NSS's pk12util and certutil.
	@(command -v pk12util >/dev/null && command -v certutil >/dev/null) || \
	  (apt-get update -q && apt-get install -y -q libnss3-tools)
	@# Keys in hardware (README): SoftHSM2 is the PKCS#11 token of the tests, OpenSC's
	@# pkcs11-tool the outside view into it.
	@(command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null) || \
	  (apt-get update -q && apt-get install -y -q softhsm2 opensc)
	@# Discovery's mDNS tests run in network namespaces of their own: ip (iproute2), unshare.
	@command -v ip >/dev/null && command -v unshare >/dev/null || \
	  (apt-get update -q && apt-get install -y -q iproute2 util-linux)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The sdist, and the wheel built from it (so a file missing from either fails), installed
# into a fresh virtual environment, not editable, then `ztpki --version` and the demo run
# from outside the checkout: tests/packaging/check_wheel.py.
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIST)
	$(BIN)/python -m build --quiet --outdir $(WHEEL_DIST) .
	$(BIN)/python tests/packaging/check_wheel.py $(WHEEL_DIST) --venv $(WHEEL_VENV)

# --durations: CI's log names the slowest tests (the run must stay under 20 minutes).
test: $(STAMP) system-deps lint typecheck wheel-check
	$(BIN)/pytest -n 2 -q --durations=25

# What a release publishes: dist/ztpki-VERSION.tar.gz and dist/ztpki-VERSION-py3-none-any.whl.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# The web console's screenshots in docs/console/ (the README shows them): `make test` takes
# them but writes them only here, so a test run leaves the tree clean (tests/e2e/screenshots.py).
screenshots: $(STAMP) system-deps
	ZTPKI_SCREENSHOTS=1 $(BIN)/pytest -q -p no:xdist tests/e2e/test_console_browser.py

fuzz: $(STAMP)
	ZTPKI_FUZZ_EXAMPLES=20000 $(BIN)/pytest -q -m fuzz -p no:xdist

bench: $(STAMP)
	$(BIN)/python benchmarks/ca_throughput.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
