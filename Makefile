# Zaindari: `make demo` runs the whole loop on embedded defaults, `make test` runs the tests.
# Every target installs what it needs into .venv (the project) or .tools/<tool> (heavy CLIs).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
PY := $(BIN)/python
STAMP := $(VENV)/.installed
AWS_HOST ?= 127.0.0.1
AWS_PORT ?= 4566
PYTEST_ARGS ?=
PY_DIRS := $(wildcard src tests functions glue_jobs bench docs)

# Heavy CLIs live in their own venvs under .tools/ (never in .venv), pinned, created on first use.
# The tool venvs' scripts carry their absolute path: resolve a symlinked .tools (a git worktree
# sharing another checkout's tools) so the venvs keep working after that worktree is removed.
TOOLS := $(or $(realpath .tools),.tools)
CFN_LINT_VERSION ?= 1.58.0
SAM_CLI_VERSION ?= 1.170.0
CFN_LINT_STAMP := $(TOOLS)/cfn-lint/.installed-$(CFN_LINT_VERSION)
SAM_STAMP := $(TOOLS)/sam/.installed-$(SAM_CLI_VERSION)
# The sagemaker SDK (v2) pins numpy>=2 and pandas>=3 (we pin <2 and <3): its own venv, and no
# zaindari install in it (zaindari.sagemaker_tools runs from src/ on PYTHONPATH).
SAGEMAKER_SDK_VERSION ?= 2.257.7
SAGEMAKER_STAMP := $(TOOLS)/sagemaker/.installed-$(SAGEMAKER_SDK_VERSION)
CHECKOV_VERSION ?= 3.3.30
CHECKOV_STAMP := $(TOOLS)/checkov/.installed-$(CHECKOV_VERSION)
# sam reads a region and credentials even for offline commands: fixed dummies keep it offline and
# deterministic (no profile lookups, no metadata-service probes, no telemetry).
AWS_OFFLINE_ENV := env -u AWS_PROFILE -u AWS_SESSION_TOKEN AWS_CONFIG_FILE=/dev/null \
	AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-1 \
	AWS_ACCESS_KEY_ID=offline AWS_SECRET_ACCESS_KEY=offline AWS_EC2_METADATA_DISABLED=true \
	SAM_CLI_TELEMETRY=0 SAM_CLI_DISABLE_UPDATE_CHECK=1

# Lambda packaging. python3.11 runs on Amazon Linux 2 (glibc 2.26): wheels must be manylinux2014
# (glibc 2.17); manylinux_2_28 wheels install but fail to import there.
LAMBDA_PLATFORM ?= x86_64-manylinux2014
LAMBDA_LIMIT_MB ?= 250
LAYER_REQUIREMENTS := layers/dependencies/requirements.txt
# Bytecode that stays valid in a Lambda zip: a timestamp .pyc records its source's mtime, which the
# zip stores to 2 s (or sam pins): half or all of them are stale on arrival and every cold start
# compiles those modules again (/var/task is read-only). Hash-based, unchecked: valid as shipped.
LAMBDA_PYC := PYC_INVALIDATION_MODE=UNCHECKED_HASH
FILE_SCORING_REQUIREMENTS := layers/file_scoring/requirements.txt
# What score_batch never imports from pyarrow (Flight, the C++ tests, other filesystems and formats),
# and the extra copies of sonamed libraries (a wheel cannot hold symlinks): trimmed from its layer.
PYARROW_TRIM := tests include src _flight* libarrow_flight* libarrow_python_flight* _pyarrow_cpp_tests* \
	_azurefs* _gcsfs* _hdfs* _orc* _dataset_orc* libarrow_python.so libarrow_python.so.*.*.* \
	libarrow_python_parquet_encryption.so libarrow_python_parquet_encryption.so.*.*.*
BUILD := build
# Where `make build-ScoreEventFunction` copies from: the repo, wherever make was started (sam build
# runs it from a scratch directory).
REPO := $(patsubst %/,%,$(dir $(abspath $(firstword $(MAKEFILE_LIST)))))

.PHONY: help setup test lint typecheck check docs demo aws-up bench clean tools lint-template build build-ScoreEventFunction build-StartRetrainingFunction build-ScoreBatchFunction build-FileScoringLayer build-DependenciesLayer build-RegisterModelFunction build-DeployModelFunction tools-sagemaker sagemaker-tools checkov

help: ## Show this help
	@echo "Zaindari: stateless predictive-maintenance functions (Lambda, OpenFaaS, Spark)."
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-26s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required (python3.11 not found)"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 required, found {sys.version.split()[0]}"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --python $(PY) -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv with the project and its dev dependencies
	@command -v java >/dev/null || echo "warning: java not found; the Spark tests and jobs need Java 17"

test: setup ## Run the test suite (unit, functions on moto, contract, e2e)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff lint and format check
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: setup ## mypy (strict) on the core package
	$(BIN)/mypy

check: lint lint-template typecheck test ## Exactly what CI runs: lint, template lint, types, tests

docs: setup ## Regenerate the generated parts of README.md (the settings table)
	$(PY) docs/update_readme.py

DEMO_ARGS ?=
demo: setup ## The whole loop on embedded defaults; report in out/demo/ (DEMO_ARGS=--small: a small plant, 1 to 2 minutes)
	$(BIN)/zaindari demo $(DEMO_ARGS)

aws-up: setup ## Run the embedded AWS (moto server) on $(AWS_HOST):$(AWS_PORT) until Ctrl-C
	$(BIN)/zaindari aws up --host $(AWS_HOST) --port $(AWS_PORT)

# `make invoke` prints only the function's JSON response on stdout (logs on stderr), so it pipes to jq.
FN ?= score_event
EVENT ?=
INVOKE_ARGS ?=
.PHONY: invoke
invoke: setup ## Run FN (default score_event) once on EVENT=events/<file>.json against the embedded AWS
	@test -n "$(EVENT)" || { echo "usage: make invoke [FN=score_event] EVENT=events/sqs_batch.json [INVOKE_ARGS='--endpoint URL --model PATH']" >&2; exit 2; }
	@$(BIN)/zaindari invoke $(FN) $(EVENT) $(INVOKE_ARGS)

bench: setup bench-tools ## Run every benchmark under bench/ and print one table
	$(PY) bench/run_all.py

clean: ## Remove build outputs and caches (keeps .venv)
	rm -rf build dist .aws-sam .pytest_cache .mypy_cache .ruff_cache out spark-warehouse
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

$(CFN_LINT_STAMP):
	rm -rf $(TOOLS)/cfn-lint
	$(PYTHON) -m venv $(TOOLS)/cfn-lint
	$(TOOLS)/cfn-lint/bin/pip install --quiet --disable-pip-version-check cfn-lint==$(CFN_LINT_VERSION)
	@touch $@

$(SAM_STAMP):
	rm -rf $(TOOLS)/sam
	$(PYTHON) -m venv $(TOOLS)/sam
	$(TOOLS)/sam/bin/pip install --quiet --disable-pip-version-check aws-sam-cli==$(SAM_CLI_VERSION)
	@touch $@

$(SAGEMAKER_STAMP): | $(STAMP)
	rm -rf $(TOOLS)/sagemaker
	$(UV) venv --quiet --python $(PYTHON) $(TOOLS)/sagemaker
	$(UV) pip install --quiet --python $(TOOLS)/sagemaker/bin/python sagemaker==$(SAGEMAKER_SDK_VERSION)
	@touch $@


tools-sagemaker: $(SAGEMAKER_STAMP) ## Create .tools/sagemaker (the sagemaker SDK for zaindari.sagemaker_tools)

sagemaker-tools: $(SAGEMAKER_STAMP) ## Run zaindari.sagemaker_tools with the SDK: make sagemaker-tools ARGS='deploy plant-anomaly --role ARN --endpoint NAME'
	SAGEMAKER_SUPPRESS_V2_WARNING=1 PYTHONPATH=$(CURDIR)/src $(TOOLS)/sagemaker/bin/python -m zaindari.sagemaker_tools $(ARGS)

# OpenFaaS build contexts (stack.yml): each function's handler.py, the edge requirements and the core.
EDGE_FUNCTIONS := score-event:score_event score-file:score_batch model-sync:model_sync
.PHONY: edge-build
edge-build: ## Assemble build/edge/<function>/ (handler.py, requirements.txt, zaindari/) for faas-cli
	@for pair in $(EDGE_FUNCTIONS); do \
		fn=$${pair%%:*}; folder=$${pair##*:}; out=$(BUILD)/edge/$$fn; \
		rm -rf $$out && mkdir -p $$out && \
		cp functions/$$folder/handler.py $$out/handler.py && \
		cp infra/edge/requirements.txt $$out/requirements.txt && \
		cp -R src/zaindari $$out/zaindari && \
		find $$out -name __pycache__ -type d -prune -exec rm -rf {} + && \
		echo "$$out: handler.py, requirements.txt, zaindari/ ($$(du -sh $$out | cut -f1))" || exit 1; \
	done

# mlflow only for the edge benchmark's baseline (`mlflow models serve`): its own venv, never .venv.
MLFLOW_VERSION ?= 3.17.2
MLFLOW_STAMP := $(TOOLS)/mlflow/.installed-$(MLFLOW_VERSION)
$(MLFLOW_STAMP): | $(STAMP)
	rm -rf $(TOOLS)/mlflow
	$(PYTHON) -m venv $(TOOLS)/mlflow
	$(UV) pip install --quiet --python $(TOOLS)/mlflow/bin/python mlflow==$(MLFLOW_VERSION) onnx onnxruntime
	@touch $@

.PHONY: tool-mlflow
tool-mlflow: $(MLFLOW_STAMP) ## Create .tools/mlflow (pinned mlflow, for bench/bench_edge_http.py)

.PHONY: bench-tools
bench-tools: $(MLFLOW_STAMP) ## What bench/bench_edge_http.py needs: .tools/mlflow and wrk (Debian package)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

$(CHECKOV_STAMP):
	rm -rf $(TOOLS)/checkov
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	@touch $@

tools: $(CFN_LINT_STAMP) $(SAM_STAMP) $(CHECKOV_STAMP) $(SAGEMAKER_STAMP) ## Create the pinned tool venvs (.tools/cfn-lint, .tools/sam, .tools/checkov, .tools/sagemaker)

lint-template: $(CFN_LINT_STAMP) $(SAM_STAMP) ## Lint template.yaml: cfn-lint, sam validate, checkov (offline)
	$(TOOLS)/cfn-lint/bin/cfn-lint template.yaml
	$(AWS_OFFLINE_ENV) $(TOOLS)/sam/bin/sam validate --template template.yaml --region eu-west-1
	$(AWS_OFFLINE_ENV) $(TOOLS)/sam/bin/sam validate --lint --template template.yaml --region eu-west-1
	@$(MAKE) --no-print-directory checkov

# Offline: no API key, no platform download; every skip is an inline comment with its reason.
checkov: $(CHECKOV_STAMP) ## Scan template.yaml with checkov (offline); skips carry their reason inline
	$(AWS_OFFLINE_ENV) BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false \
		$(TOOLS)/checkov/bin/checkov --file template.yaml --framework cloudformation --quiet --compact \
		--skip-download --skip-results-upload

# SAM's `BuildMethod: makefile` calls this with ARTIFACTS_DIR set; only mkdir, cp and rm.
# One recipe for every function's code asset: the core package plus the function's app.py, with its
# bytecode (Lambda's code folder is read-only). sam build calls build-<LogicalId>.
define copy_function
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it)"; exit 1; }
	mkdir -p "$(ARTIFACTS_DIR)"
	rm -rf "$(ARTIFACTS_DIR)/zaindari"
	cp -R "$(REPO)/src/zaindari" "$(ARTIFACTS_DIR)/zaindari"
	rm -rf "$(ARTIFACTS_DIR)"/zaindari/__pycache__ "$(ARTIFACTS_DIR)"/zaindari/*/__pycache__
	cp "$(REPO)/functions/$(1)/app.py" "$(ARTIFACTS_DIR)/app.py"
	$(PYTHON) -m compileall -q --invalidation-mode unchecked-hash "$(ARTIFACTS_DIR)"
endef

build-ScoreEventFunction: ## Copy score_event's code into ARTIFACTS_DIR (sam build calls it)
	$(call copy_function,score_event)

build-StartRetrainingFunction: ## Copy start_retraining's code into ARTIFACTS_DIR (sam build calls it)
	$(call copy_function,start_retraining)

.PHONY: build-MonitorDriftFunction
build-MonitorDriftFunction: ## Copy monitor_drift's code into ARTIFACTS_DIR (sam build calls it)
	$(call copy_function,monitor_drift)

build-ScoreBatchFunction: ## Copy score_batch's code into ARTIFACTS_DIR (sam build calls it)
	$(call copy_function,score_batch)

build-RegisterModelFunction: ## Copy register_model's code into ARTIFACTS_DIR (sam build calls it)
	$(call copy_function,register_model)

build-DeployModelFunction: ## Copy deploy_model's code into ARTIFACTS_DIR (sam build calls it)
	$(call copy_function,deploy_model)

build-DependenciesLayer: ## Install the functions' third-party wheels for Lambda into ARTIFACTS_DIR/python (sam build calls it)
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it)"; exit 1; }
	rm -rf "$(ARTIFACTS_DIR)/python"
	$(LAMBDA_PYC) $(REPO)/$(UV) pip install --quiet --target "$(ARTIFACTS_DIR)/python" --python-platform $(LAMBDA_PLATFORM) \
		--python-version 3.11 --only-binary :all: --compile-bytecode -r "$(REPO)/$(LAYER_REQUIREMENTS)"
	# sympy and mpmath come with onnxruntime for its offline tools (symbolic shape inference); the
	# runtime never imports them, and with bytecode they are 86 MB of the 250 MB budget
	rm -rf "$(ARTIFACTS_DIR)"/python/sympy "$(ARTIFACTS_DIR)"/python/sympy-* "$(ARTIFACTS_DIR)"/python/mpmath "$(ARTIFACTS_DIR)"/python/mpmath-* "$(ARTIFACTS_DIR)"/python/isympy.py

build-FileScoringLayer: ## Install pyarrow for Lambda into ARTIFACTS_DIR/python and trim it (sam build calls it)
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it)"; exit 1; }
	rm -rf "$(ARTIFACTS_DIR)/python"
	$(LAMBDA_PYC) $(REPO)/$(UV) pip install --quiet --target "$(ARTIFACTS_DIR)/python" --python-platform $(LAMBDA_PLATFORM) \
		--python-version 3.11 --only-binary :all: --no-deps --compile-bytecode -r "$(REPO)/$(FILE_SCORING_REQUIREMENTS)"
	cd "$(ARTIFACTS_DIR)/python/pyarrow" && rm -rf $(PYARROW_TRIM) \
		&& find . \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' \) -delete
	# debug symbols: 22 MB of the libraries
	@if command -v strip >/dev/null; then find "$(ARTIFACTS_DIR)/python/pyarrow" -name '*.so*' -exec strip --strip-unneeded {} +; \
	else echo "warning: strip (binutils) not found: the layer keeps its debug symbols (about 22 MB)" >&2; fi

build: setup ## Build the Lambda code and layers into build/ (no Docker, no sam) and check the 250 MB limit
	rm -rf $(BUILD)/layer $(BUILD)/score_event $(BUILD)/score_batch $(BUILD)/file_scoring_layer $(BUILD)/sizes.txt
	@$(MAKE) --no-print-directory build-DependenciesLayer ARTIFACTS_DIR=$(CURDIR)/$(BUILD)/layer
	cd $(BUILD)/layer/python && $(CURDIR)/$(PY) -I -c "import sys; sys.path.insert(0, '.'); import onnxruntime, numpy, pydantic, orjson, yaml, aws_lambda_powertools; print('layer imports: ok')"
	@$(MAKE) --no-print-directory build-ScoreEventFunction ARTIFACTS_DIR=$(CURDIR)/$(BUILD)/score_event
	@code=$$(du -sb $(BUILD)/score_event | cut -f1); layer=$$(du -sb $(BUILD)/layer | cut -f1); \
	awk -v code=$$code -v layer=$$layer -v limit=$(LAMBDA_LIMIT_MB) 'BEGIN { \
		mb = 1048576; total = code + layer; \
		printf "%-34s %9s\n", "score_event, unzipped", "MB"; \
		printf "%-34s %9.1f\n", "code   build/score_event", code / mb; \
		printf "%-34s %9.1f\n", "layer  build/layer", layer / mb; \
		printf "%-34s %9.1f\n", "total", total / mb; \
		printf "%-34s %9d\n", "Lambda limit (262,144,000 bytes)", limit; \
		printf "%-34s %9s\n", "fits", (total < limit * mb) ? "yes" : "NO" }' > $(BUILD)/sizes.txt; \
	cat $(BUILD)/sizes.txt; \
	test $$((code + layer)) -lt $$(( $(LAMBDA_LIMIT_MB) * 1048576 ))
	@$(MAKE) --no-print-directory build-FileScoringLayer ARTIFACTS_DIR=$(CURDIR)/$(BUILD)/file_scoring_layer
	cd $(BUILD)/file_scoring_layer/python && $(CURDIR)/$(PY) -I -c "import sys; sys.path[:0] = ['.', '$(CURDIR)/$(BUILD)/layer/python']; import pyarrow, pyarrow.parquet, pyarrow.csv, pyarrow.json, pyarrow.compute; print('file scoring layer imports: ok, pyarrow', pyarrow.__version__)"
	@$(MAKE) --no-print-directory build-ScoreBatchFunction ARTIFACTS_DIR=$(CURDIR)/$(BUILD)/score_batch
	@code=$$(du -sb $(BUILD)/score_batch | cut -f1); layer=$$(du -sb $(BUILD)/layer | cut -f1); \
	files=$$(du -sb $(BUILD)/file_scoring_layer | cut -f1); \
	awk -v code=$$code -v layer=$$layer -v files=$$files -v limit=$(LAMBDA_LIMIT_MB) 'BEGIN { \
		mb = 1048576; total = code + layer + files; \
		printf "\n%-34s %9s\n", "score_batch, unzipped", "MB"; \
		printf "%-34s %9.1f\n", "code   build/score_batch", code / mb; \
		printf "%-34s %9.1f\n", "layer  build/layer", layer / mb; \
		printf "%-34s %9.1f\n", "layer  build/file_scoring_layer", files / mb; \
		printf "%-34s %9.1f\n", "total", total / mb; \
		printf "%-34s %9d\n", "Lambda limit (262,144,000 bytes)", limit; \
		printf "%-34s %9s\n", "fits", (total < limit * mb) ? "yes" : "NO" }' > $(BUILD)/sizes_batch.txt; \
	cat $(BUILD)/sizes_batch.txt; cat $(BUILD)/sizes_batch.txt >> $(BUILD)/sizes.txt; rm $(BUILD)/sizes_batch.txt; \
	test $$((code + layer + files)) -lt $$(( $(LAMBDA_LIMIT_MB) * 1048576 ))

# The edge tests start a real MQTT broker: mosquitto from Debian's packages (as root, or with sudo).
.PHONY: broker
broker: ## Install mosquitto (the local MQTT broker the edge tests start) when it is missing
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { \
		sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto; }

test: broker
