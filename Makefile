# The two commands of the README: `make demo` and `make test`. Both run the idempotent set-up first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck unit integration stack-down clean

setup:
	@bash infra/bootstrap.sh

# The demo ends with the operator's report of the lake it filled (written even when the demo found a problem).
demo: setup
	$(BIN)/tierlake --profile local demo --events $${EVENTS:-5000}; status=$$?; \
	$(BIN)/tierlake --profile local report --out $${REPORT:-.run/report.html} && exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

# The whole suite: lint, types, unit tests, then integration tests against the real stack (profile ci,
# 3 Kafka nodes, own ports and run dir), which the test fixtures start and stop.
test: lint typecheck
	TIERLAKE_PROFILE=ci $(BIN)/pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

integration: setup
	TIERLAKE_PROFILE=ci $(BIN)/pytest -m integration $(PYTEST_ARGS)

stack-down:
	-$(BIN)/tierlake --profile local stack down
	-$(BIN)/tierlake --profile ci stack down

clean: stack-down
	rm -rf .run .run-test .cache $(VENV)
