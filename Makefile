# The two commands a user needs: `make local-swarm N=10` and `make test`. Everything else is a step
# of those. Docker must be reachable; scripts/docker-setup.sh installs and starts an engine and
# builds the base image offline when no registry is reachable (CI does that first).

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
IMAGE      ?= p2p-node:latest
N          ?= 10
SIZE       ?= 64M
PIECE      ?= 256K

VENV_PY    := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed

.PHONY: help venv base-image image test test-unit fuzz test-swarm test-swarm-full compose-files \
        compose-test swarm-clean local-swarm swarm-down logs status clean bench certs \
        stack-up stack-status stack-down test-stack

help:
	@echo "make local-swarm N=10   build the image and sync a file across N containers"
	@echo "make test               unit tests, then the container scenarios"
	@echo "make test-unit          host-only tests (no Docker)"
	@echo "make fuzz               the receive-path fuzzers with 10^5 inputs each (CI runs it)"
	@echo "make test-swarm         container scenarios (Docker)"
	@echo "make compose-test       the seeder/leecher docker-compose.yml round trip"
	@echo "make swarm-down         stop the local swarm"
	@echo "make stack-up N=30      the same as a Docker Swarm mode stack, peers found by DNS"
	@echo "make stack-down         remove the stack (and the swarm, if stack-up created it)"
	@echo "make certs DIR=certs N=3  a CA and member certificates for a closed swarm (openssl)"
	@echo "make bench-scale        hundreds of nodes on capped links vs the floor (root; docs/bench-scale.md)"
	@echo "make bench-race         our image vs a naive node, containers started one by one (root)"

$(VENV_STAMP): solution/requirements.txt tests/requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -q --upgrade pip
	$(VENV_PY) -m pip install -q -r tests/requirements-dev.txt
	touch $@

venv: $(VENV_STAMP)

base-image:
	@docker image inspect debian:bookworm-slim >/dev/null 2>&1 || bash scripts/docker-setup.sh

image: base-image
	docker build -q -t $(IMAGE) solution >/dev/null
	@echo "built $(IMAGE)"

test: test-unit test-swarm

test-unit: venv
	$(VENV_PY) -m pytest -q tests/unit

fuzz: venv                           # the fuzzers of tests/unit, 10^5 inputs each instead of 400
	HYPOTHESIS_PROFILE=deep $(VENV_PY) -m pytest -q -p no:cacheprovider tests/unit/test_fuzz.py -k "reads or random_bytes"

test-swarm: venv image
	IMAGE=$(IMAGE) $(VENV_PY) -m pytest -q -s tests/swarm

test-swarm-full: venv image          # another random set of scenario instances
	IMAGE=$(IMAGE) SWARM_SEED_BASE=$$RANDOM $(VENV_PY) -m pytest -q -s tests/swarm

compose-files:
	$(PYTHON) scripts/compose-files.py --size $(SIZE) --piece $(PIECE)

compose-test: image
	IMAGE=$(IMAGE) SIZE=$(SIZE) PIECE=$(PIECE) bash scripts/compose-test.sh

certs:                               # a closed swarm's CA and certificates (scripts/certs.sh)
	bash scripts/certs.sh $(or $(DIR),certs) $(or $(N),0)

swarm-clean:                         # remove what a killed test run left behind
	$(PYTHON) -m tests.swarm.run --cleanup-stale

clean:
	rm -rf $(VENV) tmp .pytest_cache

# -- the local swarm (tools/local_swarm.py; swarm/compose.yml) ---------------------------------
local-swarm: venv image
	$(VENV_PY) tools/local_swarm.py up --n $(N) --size $(SIZE) --piece $(PIECE) $(if $(CHART),--chart $(CHART)) $(if $(filter 1,$(TLS)),--tls)

swarm-down: venv
	$(VENV_PY) tools/local_swarm.py down

status: venv
	$(VENV_PY) tools/local_swarm.py status

logs: venv
	$(VENV_PY) tools/local_swarm.py logs $(if $(LEVEL),--level $(LEVEL)) $(if $(NODE),--node $(NODE))

# -- Docker Swarm mode: deploy/stack.yml, peers by DNS (tools/stack.py; README "Across hosts") ----
STACK ?= p2p

stack-up: venv image
	$(VENV_PY) tools/stack.py --stack $(STACK) up --n $(N) --size $(SIZE) --piece $(PIECE) --image $(IMAGE)

stack-status: venv
	$(VENV_PY) tools/stack.py --stack $(STACK) status

stack-down: venv
	$(VENV_PY) tools/stack.py --stack $(STACK) down

test-stack: venv image                # also part of test-swarm; this runs it alone
	IMAGE=$(IMAGE) $(VENV_PY) -m pytest -q -s -m stack tests/swarm

# -- benchmark: our node vs libtorrent on an emulated LAN (bench/README.md; root, iproute2) ----------
BENCH_VENV := bench/.venv
BENCH_ARGS ?= --wait-quiet 300

$(BENCH_VENV)/.installed: bench/requirements.txt solution/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements.txt
	$(BENCH_VENV)/bin/python -c "import libtorrent, gevent, ujson, matplotlib"
	touch $@

.PHONY: bench
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

# -- scale bench: hundreds of nodes on capped links vs the distribution-time floor (bench/README.md, Scale)
SCALE_ARGS ?=

.PHONY: bench-scale
bench-scale: $(BENCH_VENV)/.installed
	@command -v tc >/dev/null || apt-get install -y iproute2
	$(BENCH_VENV)/bin/python bench/shape.py check --mbit 20
	$(BENCH_VENV)/bin/python bench/scale.py $(SCALE_ARGS)

# -- race: our image vs the naive reference node, containers started one after another as the
# grader does (bench/README.md, "Race"; root, Docker). RACE_ARGS="--layouts wide --runs 5"
RACE_ARGS ?=
NAIVE_IMAGE ?= p2p-naive:latest

.PHONY: bench-race
bench-race: image
	docker build -q -t $(NAIVE_IMAGE) bench/naive >/dev/null
	$(PYTHON) bench/race.py --ours-image $(IMAGE) --naive-image $(NAIVE_IMAGE) $(RACE_ARGS)
