# Every target bootstraps its own virtual environment (.venv) with uv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tidal-installed
TORCH_VERSION ?= 2.13.0
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-$(TORCH_VERSION)+cpu-*.whl))
EXTRAS ?= dev

.PHONY: install demo test test-all test-ray check lint fmt types imports sysdeps clean

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -x $(PY) || uv venv --quiet --python 3.11 $(VENV) || uv venv --quiet $(VENV)
	@# CPU torch first: the local wheel when this machine has one, else PyTorch's CPU index.
	@# (A bare `torch` requirement resolved by uv would download a multi-GB CUDA build.)
	@if [ -n "$(TORCH_WHEEL)" ]; then \
	  uv pip install --quiet --python $(PY) "$(TORCH_WHEEL)"; \
	else \
	  uv pip install --quiet --python $(PY) "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu \
	  || uv pip install --quiet --python $(PY) torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	uv pip install --quiet --python $(PY) -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tidal demo

# The system programs the tests need (redis-server, chromium, iproute2, nodejs, wrk, a JDK):
# installed with apt-get when root or sudo is available, else one command is printed and make
# stops. Tests never skip silently for a missing program (tests/conftest.py).
sysdeps:
	@bash tools/system-deps.sh

test: $(STAMP) sysdeps
	$(PY) -m pytest -q -m "not ray" tests

test-all: $(STAMP) sysdeps
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks

fmt: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

types: $(STAMP)
	$(VENV)/bin/mypy

# Layering as import-linter contracts (.importlinter): who may import whom, and no cycles.
imports: $(STAMP)
	$(VENV)/bin/lint-imports

# Starlette's scripts/check: format, lint, types, layering, then the tests.
check: lint types imports test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache

# Ray is an optional extra (heavy); CI installs it and runs the tests marked `ray`.
test-ray: $(STAMP)
	uv pip install --quiet --python $(PY) -e ".[dev,ray]"
	$(PY) -m pytest -q -m ray tests

# CEP: the Java Flink host (src/tidal/cep/flink-job) built against the Flink jars of the
# apache-flink-libraries wheel (needs java + javac 17), then `tidal cep bench --flink`.
FLINK_VERSION ?= 2.3.0
CEP_FLINK := build/cep-flink
CEP_FLINK_EVENTS ?= 500000
.PHONY: cep-flink
cep-flink: $(STAMP)
	@mkdir -p $(CEP_FLINK)/wheel $(CEP_FLINK)/lib $(CEP_FLINK)/classes
	@ls $(CEP_FLINK)/lib/flink-dist-*.jar >/dev/null 2>&1 || { \
	  ls $(CEP_FLINK)/wheel/apache_flink_libraries-*.whl >/dev/null 2>&1 || \
	  python3 -m pip download --quiet --no-deps "apache-flink-libraries==$(FLINK_VERSION)" -d $(CEP_FLINK)/wheel || \
	  uvx pip download --quiet --no-deps "apache-flink-libraries==$(FLINK_VERSION)" -d $(CEP_FLINK)/wheel; \
	  unzip -q -o -j $(CEP_FLINK)/wheel/apache_flink_libraries-*.whl 'pyflink/lib/flink-dist-*' \
	    'pyflink/lib/flink-cep-*' 'pyflink/lib/log4j-*' -d $(CEP_FLINK)/lib; }
	javac -d $(CEP_FLINK)/classes -cp "$(CEP_FLINK)/lib/*" src/tidal/cep/flink-job/tidal/cep/flink/*.java
	$(VENV)/bin/tidal cep bench --flink --events $(CEP_FLINK_EVENTS)
