# Every entry point a user or CI needs. `make demo` and `make test` work on a fresh clone.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
TORCH_PIN := torch==2.13.0
DEMO_DIR  ?= .demo
FLAVOUR   ?= cuda
# Images are tagged VERSION-COMMIT (-cpu for the CPU flavour): the name `feda2v compile` writes
# into a pipeline by default (components/image.py), with REGISTRY (e.g.
# registry.example.com/team) as its $$FEDA2V_REGISTRY.
REGISTRY  ?=
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
COMMIT    := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
PREFIX    := $(if $(REGISTRY),$(patsubst %/,%,$(REGISTRY))/)
IMAGE     ?= $(PREFIX)feda2v:$(VERSION)$(if $(COMMIT),-$(COMMIT))$(if $(filter cpu,$(FLAVOUR)),-cpu)
MLFLOW_VERSION := $(shell sed -n 's/^FROM .*mlflow:v//p' docker/Dockerfile.mlflow)
MLFLOW_IMAGE   ?= $(PREFIX)feda2v-mlflow:$(MLFLOW_VERSION)

.PHONY: help venv demo test test-images rehearsal bench lint docs image image-name image-mlflow lock push \
	push-mlflow clean

help:
	@echo "make demo   - create $(VENV), install, run Run 1 -> Run 2 locally under kfp.local"
	@echo "make test   - create $(VENV) if needed, install, run the test suite"
	@echo "make bench  - benchmarks: extraction (CUDA too when present), generator training, run overhead"
	@echo "make lint   - ruff over the repository"
	@echo "make docs   - regenerate docs/configuration.md's config keys from the code"
	@echo "make image  - build docker/Dockerfile.\$$FLAVOUR (cuda|cpu) as \$$IMAGE, by default"
	@echo "              [\$$REGISTRY/]feda2v:VERSION-COMMIT[-cpu] (docker or podman)"
	@echo "make image-name   - print \$$IMAGE (what make image tags and feda2v compile names)"
	@echo "make image-mlflow - build docker/Dockerfile.mlflow as \$$MLFLOW_IMAGE"
	@echo "make lock   - pin the images' dependencies to this venv's versions (docker/constraints.txt)"
	@echo "make push   - push \$$IMAGE (docker or podman); make push-mlflow: \$$MLFLOW_IMAGE"
	@echo "make rehearsal - the cluster path on one machine: S3 + MLflow servers, the cluster-shaped"
	@echo "              YAML, every task in the CPU image (podman)"
	@echo "make test-images - build (or reuse) the CPU image, run stages and the demo pipeline in it (podman)"
	@echo "make clean  - remove demo outputs (keeps $(VENV))"

# The stamp re-runs the install when pyproject.toml changes. torch is installed first, pinned,
# so that no other requirement can pull the multi-GB CUDA build. Flower (tests' reference for
# the strategies) goes into its own folder without its dependencies, which would pin MLflow's.
$(BIN)/.installed: pyproject.toml tests/flwr-reference.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/flwr-reference \
		-r tests/flwr-reference.txt
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/feda2v data demo --out $(DEMO_DIR)/ESC-50
	$(BIN)/feda2v models tiny --out $(DEMO_DIR)/models
	$(BIN)/feda2v run --config configs/demo.json

# Test files on up to 4 workers (2 on a 2-core box); one file stays on one worker, so its
# module fixtures are built once. `pytest tests/x.py` by hand runs serially.
test: venv
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: venv
	$(BIN)/python bench/extraction.py
	$(BIN)/python bench/generator.py
	$(BIN)/python bench/execution.py

lint: venv
	$(BIN)/ruff check .

docs: venv
	$(BIN)/python scripts/doc_keys.py

image:
	FLAVOUR=$(FLAVOUR) IMAGE=$(IMAGE) TORCH_PIN="$(TORCH_PIN)" docker/build-image.sh

# torch (and its CUDA wheels) is pinned per image flavour in the Dockerfiles, not here.
lock: venv
	{ echo "# make lock: the versions the images install (pip -c); torch is pinned in the Dockerfiles."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|feda2v)[=@ ]'; \
	} > docker/constraints.txt

test-images: venv
	PY=$(BIN)/python docker/test-images.sh

ENGINE = $(shell if docker info >/dev/null 2>&1; then echo docker; else echo podman; fi)

push:
	$(ENGINE) push $(IMAGE)

image-name:
	@echo $(IMAGE)

image-mlflow:
	$(ENGINE) build -f docker/Dockerfile.mlflow -t $(MLFLOW_IMAGE) docker

push-mlflow:
	$(ENGINE) push $(MLFLOW_IMAGE)

rehearsal: venv
	PY=$(BIN)/python docker/rehearsal.sh

clean:
	rm -rf $(DEMO_DIR)
