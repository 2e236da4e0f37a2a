# The README's two commands: `make demo` and `make test`. Both set everything up from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Apify CLI (npm package apify-cli), for `apify validate-schema` and the `apify run` test; skipped without npm.
APIFY_CLI_VERSION := 1.10.0
APIFY := .tools/node_modules/.bin/apify

.PHONY: demo test lint typecheck pytest bench clean platform-run

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m src.demo

$(APIFY):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix .tools apify-cli@$(APIFY_CLI_VERSION) \
			|| echo "WARNING: could not install the Apify CLI: schema validation and the apify run test are skipped"; \
	else echo "npm not found: the Apify CLI checks are skipped"; fi

lint: $(STAMP) $(APIFY)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	@if [ -x $(APIFY) ]; then APIFY_CLI_DISABLE_TELEMETRY=1 $(APIFY) validate-schema; fi

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP) $(APIFY)
	$(PY) -m pytest

# The shared-map property tests also run on PostgreSQL and Redis: the wrapper starts throw-away servers when it can.
test: $(STAMP) $(APIFY)
	bash scripts/with-services.sh $(MAKE) --no-print-directory lint typecheck pytest

# The actor as the Apify platform runs it, against a local mock of the Apify API (tests/platform/README.md):
# INPUT='{"startUrls": [{"url": "http://127.0.0.1:8000/"}], "parallelRuns": 3}' RESULTS=out.jsonl make platform-run
# ABORT_AFTER_SECS=N aborts the first run as Console's Abort does; MIGRATE_AFTER_SECS=N migrates one run.
platform-run: $(STAMP)
	$(PY) -m tests.platform.platform_run

bench: $(STAMP)
	$(PY) -m bench.bench_shared_map

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
