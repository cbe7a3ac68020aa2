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

# The demo grows stage by stage; finished stages are reused (delete runs/demo to start over).
LAYOUTS := nphm facescape facescape-mview ava256 generic
REG_EVALS := $(foreach L,$(LAYOUTS),$(DEMO)/registered/$(L)/eval.json)

demo: $(STAMP) $(DEMO)/flame_preview.png $(REG_EVALS) $(DEMO)/shards_preview.png $(DEMO)/train/priors.pt
	@echo "demo: synthetic FLAME in $(DEMO)/flame, preview $(DEMO)/flame_preview.png"
	@echo "registration QA pages: $(DEMO)/registered/<layout>/report/index.html"
	@echo "shards: $(DEMO)/shards (index.json), preview $(DEMO)/shards_preview.png"
	@echo "training: $(DEMO)/train (checkpoints, panels, wandb offline run), priors $(DEMO)/train/priors.pt"
	@for L in $(LAYOUTS); do printf '%-16s ' $$L; $(BIN)/python -c "import json,sys; o=json.load(open(sys.argv[1]))['overall']; print(f\"{o['accepted']}/{o['scans']} accepted, face error median {o['median_mm']:.2f} mm, p95 {o['p95_mm']:.2f} mm\")" $(DEMO)/registered/$$L/eval.json; done

# Registration stage: two synthetic scans per dataset layout, registered with Ray, evaluated vs ground truth.
$(DEMO)/scans/%/.written: $(DEMO)/flame/generic_model.pkl
	rm -rf $(DEMO)/scans/$*
	$(BIN)/p3dmm synth scans --layout $* --out $(DEMO)/scans/$* --flame $(DEMO)/flame --subjects 1 --expressions 2 --seed 1
	touch $@

$(DEMO)/registered/%/eval.json: $(DEMO)/scans/%/.written
	$(BIN)/p3dmm register --source $* --root $(DEMO)/scans/$* --flame $(DEMO)/flame --out $(DEMO)/registered/$* \
		--num-cpus 2 $(if $(filter facescape,$*),--source_options '{"landmark_indices": "$(DEMO)/scans/facescape/landmark_indices.npz"}') \
		$(if $(filter facescape-mview,$*),--source_options '{"rt_scale_dict": "$(DEMO)/scans/facescape-mview/Rt_scale_dict.json"}') \
		$(if $(filter ava256,$*),--source_options '{"topology": "$(DEMO)/scans/ava256/assets/face_topology.obj"}')
	$(BIN)/p3dmm register eval --out $(DEMO)/registered/$* --truth $(DEMO)/scans/$*
	$(BIN)/p3dmm register report --out $(DEMO)/registered/$* --progress false

# Shards stage: every registration rendered from random views (+ real photo views) into WebDataset shards.
$(DEMO)/shards/index.json: $(REG_EVALS)
	$(BIN)/p3dmm render --registered $(foreach L,$(LAYOUTS),$(DEMO)/registered/$(L)) --out $(DEMO)/shards \
		--views 6 --photos 3 --size 256 --samples_per_shard 24 --num-cpus 2
	$(BIN)/p3dmm shards verify $(DEMO)/shards

$(DEMO)/shards_preview.png: $(DEMO)/shards/index.json
	$(BIN)/p3dmm shards preview $(DEMO)/shards --n 12 --out $@

# Training stage: the tiny network, two DDP processes (gloo), wandb offline, then the inference file.
$(DEMO)/train/priors.pt: $(DEMO)/shards/index.json configs/train-tiny.yaml
	rm -rf $(DEMO)/train
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(BIN)/p3dmm train fit --config configs/train-tiny.yaml \
		--data.shards $(DEMO)/shards --trainer.devices 2 --trainer.default_root_dir $(DEMO)/train
	$(BIN)/p3dmm train export $(DEMO)/train/checkpoints/last.ckpt $@

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
