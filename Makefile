# goc-study: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.goc-installed
export MPLBACKEND := Agg

.PHONY: help setup study smoke lab test lint train-tiny train-classifier train-fashion fashion-report tcc-packs eval-tiny peers-tiny peers lab-test ablations clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev,peers]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev and peers (cache-dit) extras (torch 2.14.1 from this machine's disk)

study: setup ## set up and run the study on the embedded tiny-digits model (writes figures/)
	$(BIN)/goc tiny-report
	$(BIN)/goc notebooks --preset tiny

smoke: setup ## run every notebook in smoke mode, as the tests do (figures to runs/smoke/figures, never figures/)
	$(BIN)/goc notebooks --preset tiny --smoke

lab: setup ## open the notebooks in JupyterLab with the project's environment
	$(BIN)/jupyter lab notebooks/

ablations: setup ## notebook 08: the paper's ablations measured on samples (about 30 min; resumable; writes figures/08_*)
	$(BIN)/goc notebooks --preset tiny --only 08

lab-test: setup ## the explorer in JupyterLab in headless Chromium (needs Debian's chromium; screenshots in runs/lab-test/)
	$(BIN)/python -m pytest -q -s tests/test_lab.py

test: setup ## lint and run the test suite
	$(BIN)/ruff check goc_utils tests
	$(BIN)/python -m pytest -q

lint: setup ## ruff lint only
	$(BIN)/ruff check goc_utils tests

train-tiny: setup ## (re)train the embedded tiny-digits DiT; resumes from runs/train_tiny
	$(BIN)/goc train-tiny

train-classifier: setup ## (re)train the digits classifier used as the tiny study's judge
	$(BIN)/goc train-classifier

train-fashion: setup ## build the tiny-fashion tier from Debian's dataset-fashion-mnist: VAE, judge, DiT, router, priors (about 2.5 h; resumable; skips what data/ holds)
	$(BIN)/goc train-fashion

fashion-report: setup ## the tiny-fashion report: samples, judge agreement, VAE reconstructions, FID at 2,000 / 5,000 samples (figures/00_fashion_*)
	$(BIN)/goc tiny-report --model tiny-fashion

TCC_PACK := $(BIN)/goc tcc-pack --model tiny-digits --batch-size 160
TCC_CFG4_PACKS := data/tcc/tiny-digits_ddim20_cfg4_fora-50.safetensors data/tcc/tiny-digits_ddim20_cfg4_l2c.safetensors
tcc-packs: setup ## refit the committed TCC packs (data/tcc/): tiny-digits, fora-50 and l2c, 32 samples per class, cfg 1.5, class and token pooling; about 8 min each on 2 CPU cores
	$(TCC_PACK) --host fora-50 --cfg-scale 1.5
	$(TCC_PACK) --host fora-50 --cfg-scale 1.5 --pooling token
	$(TCC_PACK) --host l2c --cfg-scale 1.5
	$(TCC_PACK) --host l2c --cfg-scale 1.5 --pooling token

data/tcc/tiny-digits_ddim20_cfg4_%.safetensors: | setup
	$(TCC_PACK) --host $* --cfg-scale 4

EVAL_METHODS := none,fora-25,fora-25+goc,fora-25+goc:auto,fora-50,fora-50+goc,fora-50+goc:auto,fora-50+tcc,l2c,l2c+goc,l2c+goc:auto,l2c+tcc,l2c+goc:coupling=unit,l2c+goc:auto:coupling=unit

eval-tiny: setup $(TCC_CFG4_PACKS) ## the committed tiny-digits results table: 14 methods x 2,000 samples x cfg 1.5 and 4.0 (resumable; fits the cfg 4.0 TCC packs first if missing)
	$(BIN)/goc eval --model tiny-digits --cfg-scale 1.5,4.0 --num-samples 2000 --per-device-batch 250 \
		--methods $(EVAL_METHODS) \
		--latency-repeats 5 --fid-bootstrap 20 --out runs/eval/tiny-digits --table figures/05_eval_tiny

SPACE := $(subst ,, )
PEER_METHODS := none,fora-25,fora-25+goc,fora-25+goc:auto,fora-25+taylor,fora-50,fora-50+goc,fora-50+goc:auto,fora-50+taylor,fora-50+tcc,\
fora-50+tcc:pooling=token,l2c,l2c+goc,l2c+goc:auto,l2c+taylor,l2c+tcc,l2c+tcc:pooling=token,\
diffusers:taylorseer:cache_interval=2:disable_cache_before_step=1:disable_cache_after_step=10,\
diffusers:taylorseer:cache_interval=2:disable_cache_before_step=1,\
diffusers:fbc:threshold=0.05,diffusers:fbc:threshold=0.13,\
diffusers:magcache:threshold=0.03:max_skip_steps=2:retention_ratio=0.2,\
diffusers:magcache:threshold=0.1:max_skip_steps=2:retention_ratio=0.1,\
diffusers:pab:spatial_attention_block_skip_range=4:spatial_attention_timestep_skip_range=-1..1000,\
diffusers:fastercache:unconditional_batch_skip_range=2,\
diffusers:fastercache:unconditional_batch_skip_range=6:spatial_attention_block_skip_range=2:spatial_attention_timestep_skip_range=-1..1000:unconditional_batch_timestep_skip_range=-1..1000,\
cachedit:dbcache:fn=1:bn=0:threshold=0.08:warmup=4,\
cachedit:dbcache:fn=1:bn=0:threshold=0.08:warmup=4:calibrator=taylorseer:order=1,\
cachedit:dbcache:fn=1:bn=0:threshold=0.08:warmup=4:calibrator=foca,\
cachedit:dbcache:fn=1:bn=0:threshold=0.08:warmup=4:calibrator=dmd,\
cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4,\
cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4:calibrator=taylorseer:order=1,\
cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4:calibrator=foca,\
cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4:calibrator=dmd

peers-tiny: setup ## the committed peers table: tiny-digits through diffusers, our methods, diffusers' caches and cache-dit's DBCache, 2,000 samples, cfg 1.5 (resumable)
	$(BIN)/goc eval --model tiny-digits --backend diffusers --cfg-scale 1.5 --num-samples 2000 --per-device-batch 250 \
		--methods $(subst $(SPACE),,$(PEER_METHODS)) \
		--latency-repeats 5 --fid-bootstrap 20 --out runs/eval/tiny-digits-diffusers --table figures/07_diffusers_peers

peers: peers-tiny ## the same as peers-tiny (the study's default model)

clean: ## remove the virtual environment and scratch runs
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
