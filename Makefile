# Two commands do all the set-up on a fresh machine with only Python 3.10+:
#   make run    - build .venv, then train on the shipped sample (a few minutes on CPU)
#   make test   - build .venv, then run the whole test suite (what CI runs)
#   make test-fast - the tests not marked slow or keras: no training beyond a few steps and no TensorFlow (about
#                    12 s to load and unload); for every edit, under 2 minutes on a quiet 2-core machine, the 25
#                    slowest listed so that a slow newcomer shows
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= xla,tune,keras,export,io,dev
# The Keras original's focal loss, for the parity checks. --no-deps: it requires the full `tensorflow`, which would
# install over the keras extra's tensorflow-cpu (same folder; torch_xla warns, TensorFlow probes for CUDA).
FOCAL_LOSS := focal-loss==0.0.7
# --no-cache-dir: the venv takes about 11 GB (torch's CUDA libraries alone 4.3 GB); pip's wheel cache would hold a
# second copy of the downloads on the same disk, and a CI run once failed on "No space left on device" while installing.

.PHONY: setup run test test-fast lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -e ".[$(EXTRAS)]"
	$(if $(findstring keras,$(EXTRAS)),$(PY) -m pip install --quiet --no-cache-dir --no-deps "$(FOCAL_LOSS)")
	touch $@

run: setup
	$(PY) scripts/fit.py

test: setup
	$(PY) -m pytest --durations=15

test-fast: setup
	$(PY) -m pytest -m "not slow and not keras" -q --durations=25

lint: setup
	$(VENV)/bin/ruff check .
