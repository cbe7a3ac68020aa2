# Two commands do all set-up: `make demo` and `make test` create .venv when it is missing, install
# the project with its pinned dependencies (about 2 minutes, 6 GB), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := runs/demo

.PHONY: demo test install lint clean-demo
.SECONDARY:

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo: every stage on the embedded synthetic default (configs/demo.yaml): synthetic FLAME -> scans of
# every dataset layout -> registration (Ray) -> shards (Ray) -> training (2 DDP processes, wandb offline) ->
# fitting of held-out views (Ray) -> evaluation -> runs/demo/report.html. A rerun reuses finished stages
# (delete runs/demo to start over).
demo: $(STAMP)
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(BIN)/p3dmm run --config configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q --durations=10

clean-demo:
	rm -rf $(DEMO)
