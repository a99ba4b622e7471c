# latentbench: `make bench TOKENIZER=sdvae` and `make test` install into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOKENIZER ?= sdvae
PROTOCOL ?= ci
CKPT ?=
DEVICES ?= 1
NODES ?= 1
STRATEGY ?= auto
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install bench test test-all list clean-runs leaderboard regress compare perf need-result

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/.installed  ## create .venv and install the suite with its test dependencies (make bench and make test do it first)
	@# a .venv copied or moved from another checkout would run that checkout's code (its editable install)
	@(cd / && $(abspath $(BIN))/python -I -c "import latentbench, os, sys; sys.exit(os.path.realpath(latentbench.__file__) != os.path.realpath('$(CURDIR)/latentbench/__init__.py'))") \
		|| { echo "$(VENV) runs latentbench from another checkout: installing this one into it" >&2; $(BIN)/python -m pip install --quiet --no-deps -e .; }

help:  ## these targets and the variables they take
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):[^#]*## /  make \1\t/' | expand -t 24
	@echo "variables: TOKENIZER=$(TOKENIZER) PROTOCOL=$(PROTOCOL) DEVICES=$(DEVICES) NODES=$(NODES) STRATEGY=$(STRATEGY) CKPT= ARGS='more CLI flags'"
	@echo "           RESULT= FAMILY= (make compare), PYTEST_ARGS= (make test, make test-all)"

bench: install  ## bench TOKENIZER under PROTOCOL (default: ci) on DEVICES x NODES processes, append its leaderboard row
	$(BIN)/latentbench bench --tokenizer $(TOKENIZER) --protocol $(PROTOCOL) $(if $(CKPT),--ckpt $(CKPT)) \
		--devices $(DEVICES) --num_nodes $(NODES) --strategy $(STRATEGY) $(ARGS)

test: install  ## the default test suite (excludes tests marked slow)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install  ## every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

leaderboard: install  ## re-render every leaderboard table from its results.jsonl
	$(BIN)/latentbench leaderboard

regress: install  ## the regression gate: smoke benches against configs/regress/smoke.yaml
	$(BIN)/latentbench regress $(ARGS)

compare: need-result install  ## RESULT=<record id> [FAMILY=...]: a result beside the papers' figures of its protocol
	$(BIN)/latentbench compare --result $(RESULT) $(if $(FAMILY),--family $(FAMILY))

perf: install  ## step times fp32/bf16, FLOPs, MFU, codec img/s, peak memory of every CPU config -> leaderboards/perf/perf.json
	$(BIN)/latentbench perf $(ARGS)

list: install  ## registered tokenizers, generators and protocols
	$(BIN)/latentbench list

clean-runs:  ## delete run directories (checkpoints, logs); leaderboards are kept
	rm -rf runs

need-result:
	@test -n "$(RESULT)" || { echo "make compare needs RESULT=<record id> (the 'id' of a line of leaderboards/<protocol>/v<N>/results.jsonl, or a unique prefix)" >&2; exit 2; }
