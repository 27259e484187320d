# Set-up and entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

# jsii silences its end-of-life banner only for the Node major version named here.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := $(shell node -p "process.versions.node.split('.')[0]" 2>/dev/null)
export CDK_DISABLE_CLI_TELEMETRY := true
export AWS_EC2_METADATA_DISABLED := true

.PHONY: install demo test lint synth bench strategies clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: install
	$(BIN)/python -m local_aws.demo $(DEMO_ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Synthesize every stack with the pinned CDK CLI, offline, bundling the aggregator
# locally with pip, then check the zipped asset against the size limit.
NODE_STAMP := node_modules/.installed
MAX_ASSET_MB ?= 25

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $(NODE_STAMP)

synth: install $(NODE_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" npx --no-install cdk synth --quiet
	$(BIN)/python -m infra.asset_size --max-mb $(MAX_ASSET_MB) cdk.out

# Side-by-side benchmarks: writes benchmarks/results.json and docs/benchmarks.md.
# Flower is a benchmark peer only, so it is installed here and not by `install`.
# Flower lives in its own environment: its requirements would move packages that
# the main environment pins.
BENCH_VENV := $(VENV)/bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): requirements.txt requirements-dev.txt requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r requirements-dev.txt -r requirements-bench.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)

# Measure the aggregation strategies on the demo's setup and write docs/strategies.md.
strategies: install
	$(BIN)/python -m benchmarks.strategies --output docs/strategies.md

clean:
	rm -rf $(VENV) cdk.out node_modules .pytest_cache .mypy_cache .ruff_cache runs

# Differential privacy: test the accountant against dp-accounting, then measure
# accuracy against epsilon into docs/privacy.md. dp-accounting gets its own venv
# because it pins attrs<24, which the CDK's packages cannot use.
PRIVACY_VENV := $(VENV)/privacy
PRIVACY_STAMP := $(PRIVACY_VENV)/.installed
PRIVACY_ARGS ?=

$(PRIVACY_STAMP): requirements-privacy.txt pyproject.toml
	$(PYTHON) -m venv $(PRIVACY_VENV)
	$(PRIVACY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PRIVACY_VENV)/bin/python -m pip install --quiet -r requirements-privacy.txt
	$(PRIVACY_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(PRIVACY_STAMP)

.PHONY: privacy
privacy: $(PRIVACY_STAMP)
	$(PRIVACY_VENV)/bin/python -m pytest tests/privacy
	$(PRIVACY_VENV)/bin/python -m benchmarks.privacy $(PRIVACY_ARGS)
