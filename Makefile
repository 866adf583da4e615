# The whole set-up on a fresh machine: `make run` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# The dev extras (pytest, napari's reader, an S3 test server, …) only for the tests.
DEV_STAMP := $(VENV)/.installed-dev

$(DEV_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

install: $(STAMP)

# The main job on the bundled sample photographs, then PNG previews of the edge result. The
# command is then .venv/bin/pipeline (or `pipeline` after `source .venv/bin/activate`).
run: $(STAMP)
	$(BIN)/pipeline run configs/example.yaml --overwrite
	$(BIN)/pipeline export out/example.zarr out/previews --format png --overwrite
	$(BIN)/pipeline preview out/example.zarr -o out/preview.png
	$(BIN)/pipeline inspect out/example.zarr

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

# Extras for the benchmark (dask-image, matplotlib, psutil), installed once beside the dev extras.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(DEV_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Timings and peak memory of the pipeline against dask-image, plain loops and the I/O floor, then the
# layer workload (benchmarks/layers.py), many small images (benchmarks/small_files.py) and learning
# (benchmarks/learn.py; `make bench TORCH=1` also times PyTorch learning the same kernel); see
# benchmarks/README.md. Pass options with ARGS, e.g. `make bench ARGS=--quick`.
# The package is byte-compiled first, as an installed one is: an editable install under
# PYTHONDONTWRITEBYTECODE (set on some build machines) would compile its modules at every start.
bench: $(BENCH_STAMP)
	$(BIN)/python -m compileall -q pipeline
	$(BIN)/python benchmarks/run.py $(ARGS)
	$(BIN)/python benchmarks/layers.py $(if $(findstring --quick,$(ARGS)),--quick,)
	$(BIN)/python benchmarks/small_files.py $(if $(findstring --quick,$(ARGS)),--quick,)
	$(BIN)/python benchmarks/learn.py $(if $(findstring --quick,$(ARGS)),--quick,) $(if $(TORCH),--torch,)

clean:
	rm -rf out .pytest_cache .hypothesis
