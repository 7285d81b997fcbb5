# torchreview_lab: `make lab` opens JupyterLab with the panel; `make test` runs every test.
# Both install what is missing first (idempotent: a stamp file records a finished install).
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.torchreview-install.stamp
BUNDLE := torchreview_lab/labextension/package.json
FRONTEND := $(wildcard labextension/src/*.ts labextension/src/*.tsx labextension/style/*) \
            schema/plugin.json package.json tsconfig.json
# `jupyter labextension` looks up jupyter-builder (and jlpm) on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
SUDO      := $(if $(filter 0,$(shell id -u)),,sudo)
PORT      ?= 8888

.PHONY: install chromium lab test test-fast build types clean

install: chromium $(STAMP) $(BUNDLE)

chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing Debian chromium (browser tests)"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; \
	fi

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned: the local CPU wheel. An open `torch>=2.1` on an env without torch would
# pull the CUDA build (GBs). Then the build requirements into the venv (so pip does not build a
# second, isolated environment with its own JupyterLab), then the package with its test extras;
# its build hook runs jlpm and builds the labextension.
BUILD_REQS := "hatchling>=1.5.0" editables "hatch-jupyter-builder>=0.9" "jupyterlab>=4.0.0,<5"
$(STAMP): $(PY) pyproject.toml package.json yarn.lock
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install $(BUILD_REQS)
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	jupyter labextension develop --overwrite .
	jupyter server extension enable --sys-prefix torchreview_lab
	touch $@

# Rebuild the (development) bundle when the frontend sources change.
$(BUNDLE): $(FRONTEND) | $(STAMP)
	jlpm build
	@touch $@

build: $(STAMP)
	jlpm build

types: $(STAMP)
	$(PY) scripts/gen_ts_types.py

lab: install
	@echo "JupyterLab on http://127.0.0.1:$(PORT)/lab (the token is in the URL printed below)"
	jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) $(ROOT_FLAG) --ServerApp.root_dir=notebooks

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not ui"

clean:
	rm -rf lib tsconfig.tsbuildinfo torchreview_lab/labextension test-artifacts $(STAMP)
