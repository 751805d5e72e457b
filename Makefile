# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: system-deps demo test lint typecheck unit fuzz bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ztpki demo $(DEMO_ARGS)

# System tools the tests drive as real third parties (curl, openssl; nginx as the TLS proxy).
# nginx-light is Debian 12's small build; newer releases ship only `nginx`. RUNLEVEL=1 keeps
# the package from starting a system nginx: the tests run their own on loopback.
system-deps:
	@command -v curl >/dev/null && command -v openssl >/dev/null && \
	  PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || \
	  (apt-get update -q && apt-get install -y -q curl openssl && \
	   (RUNLEVEL=1 apt-get install -y -q nginx-light || RUNLEVEL=1 apt-get install -y -q nginx))

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -n 2 -q

fuzz: $(STAMP)
	ZTPKI_FUZZ_EXAMPLES=20000 $(BIN)/pytest -q -m fuzz -p no:xdist

bench: $(STAMP)
	$(BIN)/python benchmarks/ca_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
