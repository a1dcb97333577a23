# convsight: `make demo` and `make test` work on a fresh machine (they create .venv themselves).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real data and weights for an offline machine (see README): ../shared beside this checkout,
# or beside the repository this clone came from. The tests need it; override with SHARED=DIR.
ORIGIN := $(shell git config --get remote.origin.url 2>/dev/null)
SHARED ?= $(firstword $(wildcard $(abspath ../shared) $(if $(ORIGIN),$(abspath $(ORIGIN)/../shared))) $(abspath ../shared))
export CONVSIGHT_SHARED := $(SHARED)
ifneq ($(wildcard $(SHARED)/data),)
export CONVSIGHT_DATA ?= $(SHARED)/data
endif
DEMO_OUT ?= demo-out

.PHONY: demo test lint format venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

# make demo: the study remade quickly (convsight paper --quick) on the offline inputs that exist
# here; without them convsight downloads what it needs (MNIST, torchvision weights).
FASHION ?= /usr/share/datasets/fashion-mnist
PAPER_INPUTS := $(if $(wildcard $(SHARED)/models),--data-dir $(SHARED)/data \
	--vgg16-weights $(SHARED)/models/vgg16_hed_features.pt \
	--classifier-weights $(SHARED)/models/mobilenet_v2_imagenet.pt \
	--photos $(SHARED)/data/imagenet-samples)

$(FASHION):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "for part 4 offline: sudo apt-get install dataset-fashion-mnist"; fi

demo: $(VENV)/.installed $(FASHION)
	$(BIN)/convsight paper --quick --out $(DEMO_OUT) $(PAPER_INPUTS) \
		$(if $(wildcard $(FASHION)),--fashion-mnist $(FASHION))

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The HTML tests drive Debian's Chromium with Playwright (Playwright's own browser download
# cannot work offline). Installed here when missing (root, as in CI).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "install Debian's chromium (sudo apt-get install chromium) for the HTML tests"; exit 1; fi

test: lint $(CHROMIUM)
	CONVSIGHT_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

format: $(VENV)/.installed-test
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Benchmarks only (not part of `make test`): torch-lucent 0.1.8 pins kornia<=0.4.1 and test
# tools, so it goes in without its dependencies, keeping torch as it is.
.PHONY: bench-deps
bench-deps: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/pip install --quiet --no-deps torch-lucent==0.1.8 kornia==0.4.1
	$(BIN)/pip install --quiet tqdm decorator ipython

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
