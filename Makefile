# make demo: synthesize a licensed catalog in two styles, build tiny models, prep it (tempo/key/loudness estimated
#            for the fine-tuning style's tracks, captions composed for those without a description), "pretrain" a tiny
#            stereo-melody MusicGen on one style (the base), LoRA fine-tune the base on the other style, train the
#            four bands of a tiny MBD, generate with both decoders, evaluate fine-tune against base on held-out
#            audio of the fine-tuning style (CPU, about 8 minutes on 2 cores).
# make test: the whole test suite (unit, contract, end to end, DDP/FSDP2, a real local SLURM), in two pytest-xdist
#            workers. Both create .venv and install everything first (make test also Debian's slurm-wlm, munge,
#            chromium and libchromaprint1, when missing: it needs root then).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-run
# The CPU wheel of torch 2.13.0 is on disk here; an unpinned torch would pull gigabytes of CUDA packages.
TORCH_PIN ?= torch==2.13.0
DEMO_PREP = --codec $(DEMO_DIR)/models/encodec_32khz --channels 2 --segment-seconds 5 --melody \
	--demucs $(DEMO_DIR)/models/htdemucs --keep-audio

FLOORS ?= transformers==5.18.0 lightning==2.6.0

.PHONY: install system-packages demo test test-floors lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH_PIN)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The SLURM tier, the report's browser test and prep's --near-duplicates (Chromaprint's library) need these;
# installed once here, before two test workers could race for dpkg's lock.
system-packages:
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v chromium >/dev/null \
		|| ! /sbin/ldconfig -p | grep -q libchromaprint.so.1; then \
		echo "installing slurm-wlm, munge, chromium and libchromaprint1 from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge chromium \
			libchromaprint1 >/dev/null; \
	fi

demo: install
	$(BIN)/mgft synth-catalog $(DEMO_DIR)/catalog-base --tracks 12 --seconds 15 --style bright --seed 0
	$(BIN)/mgft synth-catalog $(DEMO_DIR)/catalog --tracks 12 --seconds 15 --style dark --seed 1 --bad-files
	$(BIN)/mgft synth-catalog $(DEMO_DIR)/catalog-val --tracks 6 --seconds 15 --style dark --seed 2
	$(BIN)/mgft tiny-models $(DEMO_DIR)/models
	printf 'a dark melancholic ambient track in A minor: an FM bell lead over a warm saw pad\nan upbeat happy electronic track in C major with a plucked lead and drums\n' > $(DEMO_DIR)/prompts.txt
	$(BIN)/mgft prep --input $(DEMO_DIR)/catalog-base --output $(DEMO_DIR)/shards-base $(DEMO_PREP)
	$(BIN)/mgft prep --input $(DEMO_DIR)/catalog --output $(DEMO_DIR)/shards $(DEMO_PREP) --auto-tags
	$(BIN)/mgft prep --input $(DEMO_DIR)/catalog-val --output $(DEMO_DIR)/shards-val $(DEMO_PREP) --auto-tags
	HF_HUB_OFFLINE=1 $(BIN)/mgft fit --config recipes/tiny/stereo-melody-pretrain.yaml \
		--model.pretrained $(DEMO_DIR)/models/musicgen-stereo-melody \
		--data.shards $(DEMO_DIR)/shards-base --data.val_shards $(DEMO_DIR)/shards-val \
		--trainer.default_root_dir $(DEMO_DIR)/base-run
	HF_HUB_OFFLINE=1 $(BIN)/mgft export $(DEMO_DIR)/base-run/checkpoints/last.ckpt --out $(DEMO_DIR)/base --format hf
	HF_HUB_OFFLINE=1 $(BIN)/mgft fit --config recipes/tiny/stereo-melody-lora.yaml \
		--model.pretrained $(DEMO_DIR)/base \
		--data.shards $(DEMO_DIR)/shards --data.val_shards $(DEMO_DIR)/shards-val \
		--trainer.default_root_dir $(DEMO_DIR)/run
	for band in 0 1 2 3; do HF_HUB_OFFLINE=1 $(BIN)/mgft mbd-fit --config recipes/tiny/mbd-band.yaml \
		--model.codec $(DEMO_DIR)/models/encodec_32khz --model.band $$band --trainer.max_steps 20 \
		--data.shards $(DEMO_DIR)/shards --data.val_shards $(DEMO_DIR)/shards-val \
		--trainer.default_root_dir $(DEMO_DIR)/mbd/band$$band || exit 1; done
	$(BIN)/mgft mbd-pack "$(DEMO_DIR)/mbd/band*/checkpoints/last.ckpt" --out $(DEMO_DIR)/mbd
	for decoder in encodec mbd; do HF_HUB_OFFLINE=1 $(BIN)/mgft generate --model $(DEMO_DIR)/run/checkpoints/last.ckpt \
		--prompts $(DEMO_DIR)/prompts.txt --duration 3 --decoder $$decoder --mbd $(DEMO_DIR)/mbd \
		--out $(DEMO_DIR)/samples/$$decoder --overwrite || exit 1; done
	HF_HUB_OFFLINE=1 $(BIN)/mgft eval --model $(DEMO_DIR)/run/checkpoints/last.ckpt \
		--baseline $(DEMO_DIR)/base --data.shards $(DEMO_DIR)/shards-val --num-samples 16 --out $(DEMO_DIR)/report
	@echo "demo: shards, manifest.jsonl (estimated tempo/key/loudness under 'estimates'), rejects.jsonl and stats.json are in $(DEMO_DIR)/shards (base style: shards-base, held out: shards-val)"
	@echo "demo: the base model's pretraining run is in $(DEMO_DIR)/base-run, the base itself (transformers format) in $(DEMO_DIR)/base"
	@echo "demo: the fine-tune's config, checkpoints, samples (wav + spectrogram/chroma png) and offline wandb run are in $(DEMO_DIR)/run"
	@echo "demo: the MBD band runs and the packed mbd_musicgen_32khz.th are in $(DEMO_DIR)/mbd"
	@echo "demo: generated WAVs (EnCodec and MBD decoders) are in $(DEMO_DIR)/samples"
	@echo "demo: fine-tune vs base on held-out audio of the fine-tuning style: $(DEMO_DIR)/report/report.html (metrics.json beside it)"

test: install system-packages
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q --durations=15 -n 2 --dist loadfile

# The suite against the lowest transformers and Lightning that pyproject admits (its floors say they passed here);
# a separate environment, not part of `make test`.
test-floors: system-packages
	test -x .venv-floors/bin/python || $(PY) -m venv .venv-floors
	.venv-floors/bin/pip install --disable-pip-version-check -q $(TORCH_PIN)
	.venv-floors/bin/pip install --disable-pip-version-check -q -e '.[test]' $(FLOORS)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline .venv-floors/bin/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .venv-floors
