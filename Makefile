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

.PHONY: demo test test-fast lint format venv clean docs

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

# make lint: ruff (style, imports) and mypy (types of src/convsight; settings in pyproject.toml).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The HTML tests drive Debian's Chromium with Playwright (Playwright's own browser download
# cannot work offline). Installed here when missing (root, as in CI).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "install Debian's chromium (sudo apt-get install chromium) for the HTML tests"; exit 1; fi

# make test: lint, then the whole suite (what CI runs). make test-fast: the unit tests only
# (tests not marked `slow`: no subprocesses, CLI runs on real models, browser, Ray, training or
# big pretrained networks), under a minute, for the edit-test loop; no lint, no browser.
test: lint $(CHROMIUM)
	CONVSIGHT_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

# make docs: the documentation site (docs/, mkdocs.yml) built strictly (any warning fails) into site/.
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

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

# make bench: the whole benchmark suite (after `make bench-deps`), each script at the budget its
# flags state, at the default thread count, then the tables of docs/benchmarks.md regenerated from the JSON.
# Budget: about 4 hours on 2 CPU cores (render ~50 min, Lucent timed on 4 of 16 channels and
# scaled; faithfulness ~1 h, 104 photos; class-model quality ~50 min, seeds 0-1 and 2-3;
# attribution ~20 min, occlusion / Score-CAM on 4 photos, then those two again, best of 2, ~10
# min; figures ~30 min; atlas ~10 min; atlas on Ray ~25 min; MNIST ~5 min; compression ~3 min; invariances ~1 min). The scripts refuse to write benchmarks/results/ from a dirty tree: commit first
# (CONVSIGHT_BENCH_ALLOW_DIRTY=1 records the run as dirty instead; CONVSIGHT_BENCH_RESULTS=DIR
# writes a trial run into DIR and leaves docs/benchmarks.md alone). benchmarks/classviz_screen.py is a
# screening tool (recipes on the command line), not part of the suite.
BENCH_PY := $(BIN)/python benchmarks
.PHONY: bench
bench: $(VENV)/.installed
	$(BENCH_PY)/mnist.py
	$(BENCH_PY)/atlas.py
	$(BENCH_PY)/atlas_ray.py
	$(BENCH_PY)/render.py --lucent-channels 4
	$(BENCH_PY)/render.py --flops-only
	$(BENCH_PY)/render.py --precision-only --channels 4 --layers features.2
	$(BENCH_PY)/attribution.py --occlusion-ppe 1,2 --engines frozen,incremental --slow-images 4
	$(BENCH_PY)/attribution.py --only occlusion,scorecam --merge --occlusion-ppe 1,2 \
		--engines frozen,incremental --slow-images 4 --repeats 2
	$(BENCH_PY)/compression.py
	$(BENCH_PY)/invariances.py --softplus 10 --k 4
	$(BENCH_PY)/faithfulness.py
	$(BENCH_PY)/classviz_quality.py --size 160
	$(BENCH_PY)/classviz_quality.py --size 160 --seed-list 2,3 --skip-lucent \
		--only 'robust,lucent-style adam 0.1' --name classviz_quality_seeds23
	$(BENCH_PY)/optvis_figures.py --out runs/optvis-figures --docs runs/optvis-figures/docs
	@if [ -n "$$CONVSIGHT_BENCH_RESULTS" ]; then \
		echo "trial run in $$CONVSIGHT_BENCH_RESULTS: docs/benchmarks.md left as it is"; \
	else $(BIN)/python benchmarks/tables.py; fi

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache site
