# medseg course: `make course` runs the whole course, `make test` runs every check.
# Both create .venv on first use (CPU torch pinned first, then the locked stack).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make course PROFILE=smoke (or MEDSEG_PROFILE=smoke make course): full | smoke | decathlon.
PROFILE ?= $(or $(MEDSEG_PROFILE),full)
TORCH_PIN := torch==2.13.0
EXTRAS := course,deploy,openvino,tune,explain,book,dev
LOCK := requirements/cpu-lock.txt
STAMP := $(VENV)/.medseg-installed

export MEDSEG_DATA_DIR ?= $(CURDIR)/data
export MEDSEG_RUN_DIR ?= $(CURDIR)/runs
# Keep library caches (matplotlib, onnxruntime, torch.compile) inside the run directory.
export MPLCONFIGDIR ?= $(MEDSEG_RUN_DIR)/.cache/matplotlib
export XDG_CACHE_HOME ?= $(MEDSEG_RUN_DIR)/.cache
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PYTHONUTF8 := 1

.PHONY: setup course book test lint check pytest nbtest strip lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

## The whole course: full (the default: real learning on synthetic data), smoke (seconds,
## nothing learnt), decathlon (downloads Task04_Hippocampus; for a GPU).
## Writes runs/course-$(PROFILE)/report.md and report.html; fails if a threshold is missed.
course: setup
	$(BIN)/medseg data synth --profile $(PROFILE)
	$(BIN)/medseg course run --profile $(PROFILE)

## The course as a static site to read without running: runs/book/index.html, one page per
## executed notebook (offline: no fonts, themes or scripts fetched). Reuses
## runs/course-$(PROFILE) when its notebooks are newer than their sources, else runs the
## course first (PROFILE=smoke make book: minutes).
book: setup
	MEDSEG_SOLUTIONS=1 $(BIN)/medseg course book --profile $(PROFILE)

## Everything CI checks: lint, unit tests, notebook conventions, notebooks under nbval.
test: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint check pytest nbtest; \
	echo "make test finished in $$(( $$(date +%s) - start )) s"

lint: setup
	$(BIN)/ruff check .

check: setup
	$(BIN)/medseg course check

pytest: setup
	MEDSEG_PROFILE=smoke $(BIN)/pytest -q --durations=10

## Solution cells (%%solution) run and are checked here; "Run all" leaves them off.
nbtest: setup
	MEDSEG_PROFILE=smoke MEDSEG_SOLUTIONS=1 MEDSEG_RUN_DIR=$(MEDSEG_RUN_DIR)/nbval \
	  $(BIN)/pytest -q --nbval-lax -p no:cacheprovider notebooks/

strip: setup
	$(BIN)/medseg course strip

## Re-pin the stack after changing pyproject.toml (fresh venv, then freeze).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet $(TORCH_PIN)
	.lock-venv/bin/python -m pip install --quiet -e ".[$(EXTRAS)]"
	{ echo "# Pinned CPU environment for 'make' (constraints for pip -c). torch is pinned in the Makefile."; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -iv '^torch=='; } > $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs
