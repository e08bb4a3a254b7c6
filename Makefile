# vlmq: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test up down migrate tiny-model bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on this machine's disk; never PyPI torchvision beside it.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[worker,test]"
	touch $(STAMP)

demo: install
	$(PY) -m scripts.devstack demo

up: install
	$(PY) -m scripts.devstack up

down:
	$(PY) -m scripts.devstack down

migrate: install
	$(PY) -m alembic upgrade head

tiny-model: install
	$(PY) -m workers.inference.tiny_model .run/models/internvl-tiny --if-missing

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) bench/api_submit.py
	$(PY) bench/upload.py
	$(PY) bench/api_memory.py

clean:
	rm -rf .run
