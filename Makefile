# vilaray: `make demo` and `make test` set themselves up on a fresh machine (Python 3.11 + package registries).
PYTHON ?= python3
VENV ?= .venv
# Installed before everything else: a bare `torch` requirement resolved first pulls GBs of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vilaray-installed
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export WANDB_MODE := offline
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint clean

setup: $(STAMP)

# The venv gets vilaray's dependencies but not vilaray itself, like a cluster node: jobs import it from
# platform/ (jobs/_bootstrap.py) and ship it to Ray workers in the runtime env. `pip install .` also works.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	touch $@

demo: setup
	$(PY) jobs/demo.py

test: setup
	$(PY) -m pytest -q --durations=10 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check platform jobs tests

clean:
	rm -rf $(VENV) runs artifacts
