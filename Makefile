# The README's two commands are `make run` and `make test`; each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run serve doctor test lint bench bench-estimate calibrate refit-families clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,vision]'
	touch $(STAMP)

# The main job: a story from the real TinyStories model that sits beside the project (../shared).
MODEL ?= ../shared/models/stories260K/stories260K.gguf
PROMPT ?= Once upon a time
MAX_TOKENS ?= 200

run: $(STAMP)
	@if [ ! -f "$(MODEL)" ]; then \
	  echo "make run: $(MODEL) is not here (it lives in ../shared beside the project)."; \
	  echo "Pass a model instead: make run MODEL=path/to/model.gguf|model-folder|owner/name"; \
	  exit 2; fi
	$(BIN)/unimap run -m "$(MODEL)" --prompt "$(PROMPT)" --max-tokens $(MAX_TOKENS) --max-seq-len 512

# An OpenAI-compatible server for the same model (Ctrl-C stops it): curl localhost:8080/health
HOST ?= 127.0.0.1
PORT ?= 8080
MAX_BATCH_SIZE ?= 4

serve: $(STAMP)
	@if [ ! -f "$(MODEL)" ] && [ ! -d "$(MODEL)" ]; then \
	  echo "make serve: $(MODEL) is not here (it lives in ../shared beside the project)."; \
	  echo "Pass a model instead: make serve MODEL=path/to/model.gguf|model-folder"; \
	  exit 2; fi
	$(BIN)/unimap serve "$(MODEL)" --host $(HOST) --port $(PORT) --max-seq-len 512 \
	  --max-batch-size $(MAX_BATCH_SIZE)

doctor: $(STAMP)
	$(BIN)/unimap doctor

# The test files run in a worker per core (at most 4; TEST_WORKERS=0 runs them in this process),
# each file whole in one worker: its fixtures are built once and its peaks are its own process's.
TEST_WORKERS ?= auto

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check unimap tests tools examples
	$(BIN)/mypy unimap

bench: $(STAMP)
	$(BIN)/python tools/bench_probe.py
	$(BIN)/python tools/bench_cpu_blas.py
	$(BIN)/python tools/bench_plan.py
	$(BIN)/python tools/bench_runtime.py
	$(MAKE) bench-estimate

# Predicted against measured peak memory over the benchmark matrix (about 2 hours on 2 cores,
# most of it the family twins; `python tools/bench_estimate.py --only NAME` runs a part).
bench-estimate: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python tools/bench_estimate.py --png docs/estimate_vs_measured.png

# Refit unimap/calibration.py, unimap/vision_calibration.py and unimap/family_calibration.py from
# measurements on this machine (about 12 + 3 + 120 minutes on 2 cores; the family runs are kept
# in tools/family_runs.json.gz), then Metal's factors over them from the published Mac peaks in
# docs/metal (seconds). `make refit-families` redoes the family fits from the kept runs (seconds).
calibrate: $(STAMP)
	$(BIN)/python tools/calibrate_activations.py --write
	$(BIN)/python tools/calibrate_vision.py --write
	$(BIN)/python tools/calibrate_families.py --write --save tools/family_runs.json.gz
	$(BIN)/python tools/calibrate_metal.py --write

refit-families: $(STAMP)
	$(BIN)/python tools/calibrate_families.py --refit tools/family_runs.json.gz --write
	$(BIN)/python tools/calibrate_metal.py --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
