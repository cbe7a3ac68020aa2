# Two commands do all set-up: `make demo` and `make test` create .venv when it is missing, install
# the project with its pinned dependencies (about 2 minutes, 6 GB), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := runs/demo

.PHONY: demo test install lint clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo grows stage by stage; finished stages are reused (delete runs/demo to start over).
demo: $(STAMP) $(DEMO)/flame_preview.png
	@echo "demo: synthetic FLAME in $(DEMO)/flame, preview $(DEMO)/flame_preview.png"

$(DEMO)/flame/generic_model.pkl: configs/flame.yaml | $(STAMP)
	$(BIN)/p3dmm flame synth --config configs/flame.yaml --out $(DEMO)/flame
	$(BIN)/p3dmm flame check --flame $(DEMO)/flame

$(DEMO)/flame_preview.png: $(DEMO)/flame/generic_model.pkl
	$(BIN)/p3dmm flame preview --config configs/flame.yaml --flame $(DEMO)/flame --out $@

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO)
