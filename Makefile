# Every entry point a user or CI needs. `make demo` and `make test` work on a fresh clone.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
TORCH_PIN := torch==2.13.0
DEMO_DIR  ?= .demo
IMAGE     ?= feda2v:latest
FLAVOUR   ?= cuda

.PHONY: help venv demo test bench lint docs image push clean

help:
	@echo "make demo   - create $(VENV), install, run Run 1 -> Run 2 locally under kfp.local"
	@echo "make test   - create $(VENV) if needed, install, run the test suite"
	@echo "make bench  - benchmarks: extraction (CUDA too when present), generator training, run overhead"
	@echo "make lint   - ruff over the repository"
	@echo "make docs   - regenerate the README's config-key reference from the code"
	@echo "make image  - docker build docker/Dockerfile.\$$FLAVOUR (cuda|cpu) as \$$IMAGE"
	@echo "make push   - docker push \$$IMAGE"
	@echo "make clean  - remove demo outputs (keeps $(VENV))"

# The stamp re-runs the install when pyproject.toml changes. torch is installed first, pinned,
# so that no other requirement can pull the multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/feda2v data demo --out $(DEMO_DIR)/ESC-50
	$(BIN)/feda2v models tiny --out $(DEMO_DIR)/models
	$(BIN)/feda2v run --config configs/demo.json

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/extraction.py
	$(BIN)/python bench/generator.py
	$(BIN)/python bench/execution.py

lint: venv
	$(BIN)/ruff check .

docs: venv
	$(BIN)/python scripts/readme_keys.py

image:
	docker build -f docker/Dockerfile.$(FLAVOUR) -t $(IMAGE) .

push:
	docker push $(IMAGE)

clean:
	rm -rf $(DEMO_DIR)
