# goc-study: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.goc-installed
export MPLBACKEND := Agg

.PHONY: help setup study study-tiny smoke lab test lint train-tiny train-classifier train-fashion fashion-report tcc-packs eval eval-tiny peers peers-tiny lab-test ablations ablations-tiny report clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev,peers]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev and peers (cache-dit) extras (torch 2.14.1 from this machine's disk)

study: setup ## set up and run the study (notebooks 01-07) on the embedded latent tiny-fashion model (writes figures/)
	$(BIN)/goc notebooks
	$(BIN)/goc report

study-tiny: setup ## the same study on the embedded pixel-space tiny-digits model (writes figures/tiny-digits/)
	$(BIN)/goc tiny-report --model tiny-digits
	$(BIN)/goc notebooks --preset tiny
	$(BIN)/goc report --model tiny-digits

smoke: setup ## run every notebook in smoke mode on tiny-digits, as the tests do (figures to runs/smoke/figures, never figures/)
	$(BIN)/goc notebooks --preset tiny --smoke

lab: setup ## open the notebooks in JupyterLab with the project's environment
	$(BIN)/jupyter lab notebooks/

ablations: setup ## notebook 08 on tiny-fashion: the paper's ablations measured on samples (resumable; writes figures/08_*)
	$(BIN)/goc notebooks --only 08
	$(BIN)/goc report

ablations-tiny: setup ## notebook 08 on tiny-digits (about 30 min; resumable; writes figures/tiny-digits/08_*)
	$(BIN)/goc notebooks --preset tiny --only 08
	$(BIN)/goc report --model tiny-digits

report: setup ## regenerate figures/README.md and figures/tiny-digits/README.md from their CSVs (seconds)
	$(BIN)/goc report
	$(BIN)/goc report --model tiny-digits

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

fashion-report: setup ## the tiny-fashion tier's report (not part of make study; about 10 min): samples, judge agreement, VAE reconstructions, FID at 2,000 / 5,000 samples (figures/00_fashion_*)
	$(BIN)/goc tiny-report --model tiny-fashion
	$(BIN)/goc report

SPACE := $(subst ,, )
COMMA := ,
TCC_PACK = $(BIN)/goc tcc-pack --model $(1) --batch-size 160
TCC_ALPHAS := 0.25,0.5,1,1.75
tcc-packs: setup ## refit the committed TCC packs (data/tcc/): fora-50 and l2c, 32 samples per class; class pooling (published DiT fit, alpha 1.75) and token pooling at cfg 1.5 on both tiers, class pooling at cfg 4.0 and per-sample pooling (published PixArt fit, alpha chosen on held-out noise among 0.25,0.5,1,1.75) at cfg 1.5 and 4.0 on tiny-fashion
	for model in tiny-fashion tiny-digits; do for host in fora-50 l2c; do \
		$(call TCC_PACK,$$model) --host $$host --cfg-scale 1.5; \
		$(call TCC_PACK,$$model) --host $$host --cfg-scale 1.5 --pooling token; done; done
	for host in fora-50 l2c; do $(call TCC_PACK,tiny-fashion) --host $$host --cfg-scale 4; done
	for cfg in 1.5 4; do for host in fora-50 l2c; do \
		$(call TCC_PACK,tiny-fashion) --host $$host --cfg-scale $$cfg --pooling sample --alpha $(TCC_ALPHAS); done; done
	$(BIN)/goc tcc-packs --model tiny-fashion --table figures/00_tcc_packs
	$(BIN)/goc tcc-packs --model tiny-digits --table figures/tiny-digits/00_tcc_packs
	$(BIN)/goc report
	$(BIN)/goc report --model tiny-digits

data/tcc/tiny-digits_ddim20_cfg4_%.safetensors: | setup
	$(call TCC_PACK,tiny-digits) --host $* --cfg-scale 4

EVAL_METHODS := none,fora-25,fora-25+goc,fora-25+goc:auto,fora-50,fora-50+goc,fora-50+goc:auto,fora-50+tcc,l2c,l2c+goc,l2c+goc:auto,l2c+tcc,l2c+goc:coupling=unit,l2c+goc:auto:coupling=unit
EVAL_METHODS_FASHION := $(subst l2c+tcc$(COMMA),l2c+tcc$(COMMA)fora-50+tcc:pooling=sample$(COMMA)l2c+tcc:pooling=sample$(COMMA),$(EVAL_METHODS))
EVAL = $(BIN)/goc eval --model $(1) --cfg-scale 1.5,4.0 --num-samples 2000 --per-device-batch 250 --methods $(3) \
	--latency-repeats 5 --fid-bootstrap 20 --out runs/eval/$(1) --table $(2)

EVAL_PAIRS := --pair fora-50+goc fora-50 --pair l2c+goc l2c --pair fora-25+goc fora-25 \
	--pair fora-50+goc:auto fora-50+goc --pair l2c+goc:auto l2c+goc --pair fora-25+goc:auto fora-25+goc \
	--pair l2c+goc:coupling=unit l2c+goc --pair l2c+goc:auto:coupling=unit l2c+goc:auto \
	--pair fora-50+tcc fora-50 --pair l2c+tcc l2c --pair fora-50+tcc fora-50+goc --pair l2c+tcc l2c+goc \
	--pair fora-50+tcc:pooling=sample fora-50 --pair l2c+tcc:pooling=sample l2c \
	--pair fora-50+tcc:pooling=sample fora-50+goc --pair l2c+tcc:pooling=sample l2c+goc \
	--pair fora-50+tcc:pooling=sample fora-50+goc:auto --pair l2c+tcc:pooling=sample l2c+goc:auto

eval: setup ## the results table on tiny-fashion: 14 methods x 2,000 samples x cfg 1.5 and 4.0, then its paired verdicts (resumable; writes figures/05_eval and 05_verdicts)
	$(call EVAL,tiny-fashion,figures/05_eval,$(EVAL_METHODS_FASHION))
	$(BIN)/goc verdicts runs/eval/tiny-fashion --model tiny-fashion --cfg-scale 1.5,4.0 $(EVAL_PAIRS) --table figures/05_verdicts
	$(BIN)/goc report

eval-tiny: setup data/tcc/tiny-digits_ddim20_cfg4_fora-50.safetensors data/tcc/tiny-digits_ddim20_cfg4_l2c.safetensors ## the same table on tiny-digits (fits its cfg 4.0 TCC packs first; writes figures/tiny-digits/05_eval_tiny)
	$(call EVAL,tiny-digits,figures/tiny-digits/05_eval_tiny,$(EVAL_METHODS))
	$(BIN)/goc report --model tiny-digits

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

PEER_METHODS_FASHION := $(subst l2c+tcc:pooling=token$(COMMA),l2c+tcc:pooling=token$(COMMA)fora-50+tcc:pooling=sample$(COMMA)l2c+tcc:pooling=sample$(COMMA),\
	$(subst threshold=0.08:warmup,threshold=0.07:warmup,$(subst fbc:threshold=0.13,fbc:threshold=0.1,\
	$(subst magcache:threshold=0.1:max_skip_steps=2:retention_ratio=0.1,magcache:threshold=0.15:max_skip_steps=2:retention_ratio=0.2,\
	$(PEER_METHODS)))))
PEER_PAIRS := --pair fora-50+goc:auto fora-50+taylor --pair fora-50+goc fora-50+taylor --pair l2c+goc l2c+taylor \
	--pair l2c+goc:auto l2c+taylor --pair fora-25+goc:auto fora-25+taylor \
	--pair fora-50+goc:auto cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4:calibrator=foca \
	--pair fora-50+goc cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4:calibrator=foca \
	--pair l2c+goc cachedit:dbcache:fn=1:bn=0:threshold=0.07:warmup=4:calibrator=foca \
	--pair fora-25+goc:auto cachedit:dbcache:fn=1:bn=0:threshold=0.07:warmup=4:calibrator=foca \
	--pair fora-50+goc:auto diffusers:fbc:threshold=0.1 --pair fora-50+tcc:pooling=token fora-50 --pair l2c+tcc:pooling=token l2c \
	--pair fora-50+tcc:pooling=sample fora-50 --pair l2c+tcc:pooling=sample l2c \
	--pair fora-50+tcc:pooling=sample fora-50+goc:auto --pair l2c+tcc:pooling=sample l2c+goc:auto
PEERS = $(BIN)/goc eval --model $(1) --backend diffusers --cfg-scale 1.5 --num-samples $(2) --per-device-batch 250 \
	--methods $(subst $(SPACE),,$(3)) --latency-repeats 5 --fid-bootstrap 20 --out runs/eval/$(1)-diffusers$(4) --table $(5)

peers: setup ## the peers table on tiny-fashion through diffusers (our methods, diffusers' caches, cache-dit's DBCache, TCC; 1,000 samples, cfg 1.5) and its paired verdicts (resumable; writes figures/07_diffusers_peers and 07_verdicts)
	$(call PEERS,tiny-fashion,1000,$(PEER_METHODS_FASHION),-n1000,figures/07_diffusers_peers)
	$(BIN)/goc verdicts runs/eval/tiny-fashion-diffusers-n1000 --model tiny-fashion $(PEER_PAIRS) --table figures/07_verdicts
	$(BIN)/goc report

peers-tiny: setup ## the same table on tiny-digits, 2,000 samples (writes figures/tiny-digits/07_diffusers_peers)
	$(call PEERS,tiny-digits,2000,$(PEER_METHODS),,figures/tiny-digits/07_diffusers_peers)
	$(BIN)/goc report --model tiny-digits

clean: ## remove the virtual environment and scratch runs
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
