# Postfix Manager — the two commands a fresh Debian machine needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= configs/pfm.toml.example
STAMP := $(VENV)/.installed

.PHONY: all run test bench lint venv deps clean help

help:
	@echo "make run    - create the venv, install, start the daemons on the demo config (Ctrl-C stops)"
	@echo "make test   - install test dependencies (Debian packages when root) and run every test"
	@echo "make bench  - run the benchmarks in tests/bench/ (prints tables)"
	@echo "make lint   - ruff + mypy"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

deps:
	bash .ci/install-deps core sqlite ldap dovecot metricsd

run: $(STAMP)
	@mkdir -p var
	@# the demo config with its relative var/ paths made absolute (unix sockets need that)
	@sed 's|"var/|"$(CURDIR)/var/|g; s|"unix:/run/pfm/|"unix:$(CURDIR)/var/|g' $(CONFIG) > var/pfm.toml
	PFM_CONFIG=var/pfm.toml $(PY) -m services.devrun --config var/pfm.toml

test: $(STAMP) deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP) deps
	$(PY) tests/bench/bench_policy.py
	$(PY) tests/bench/bench_directory.py
	$(PY) tests/bench/bench_metricsd_parse.py
	$(PY) tests/bench/bench_metricsd_scrape.py
	$(PY) tests/bench/bench_authd_logins.py
	$(PY) tests/bench/bench_metricsd_daemon.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
