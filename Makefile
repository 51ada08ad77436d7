# Two entry points, both from a fresh clone on Debian:
#   make run    create the venv, install, get the data, run a 30-trial LeNet study
#   make test   the same set-up, then the whole test suite
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data databases run test lint bench

$(BIN)/fmnist-search: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres,mysql]'
	touch $@

install: $(BIN)/fmnist-search

# Fashion-MNIST from Debian's package (offline, verified by SHA-256 when loaded).
data:
	@test -f $(DATA_DIR)/train-images-idx3-ubyte.gz || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

# PostgreSQL and MariaDB binaries for the multi-worker and fault tests (the tests start
# their own servers on loopback; the packages' own services are not needed).
databases:
	@{ ls /usr/lib/postgresql/*/bin/initdb && test -x /usr/sbin/mariadbd; } >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql mariadb-server; }

run: install data
	$(BIN)/fmnist-search run --model lenet --trials 30

# Lint first (fast), so the suite's own summary is the last thing printed.
test: install data databases lint
	$(BIN)/python -m pytest -m "slow or not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
