# Every target sets itself up on a fresh machine: `make demo` and `make test` are all a user needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
JOBS    ?= 2

.PHONY: install demo test test-slow lint bench reproduce fashion-mnist clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on these machines' disk, never a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/chrysalis demo

# pytest exits 5 when it collects no tests: that is a failure, never a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/chrysalis bench --out benchmarks/results.json

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  (echo "install the Debian package dataset-fashion-mnist (or pass a root with the idx files)" >&2; exit 1)

# The paper's experiments on the real data available here (docs/RESULTS.md): one sweep per task
# (configs/reproduce/*.yaml); finished trials are skipped, so an interrupted run just continues.
# One single-threaded trial per core (WORKERS=N to change).
WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
reproduce: $(STAMP) fashion-mnist
	status=0; for f in configs/reproduce/*.yaml; do $(BIN)/chrysalis sweep $$f --workers $(WORKERS) || status=1; done; \
	$(BIN)/chrysalis report runs/reproduce --out runs/reproduce/report.md --csv runs/reproduce/report.csv; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
