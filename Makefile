# Every target creates .venv when missing and installs what it needs: nothing else is required.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser demo dev test test-fast lint bench clean package

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[test,lint]"
	touch $(STAMP)

# The example DAG against the emulator, in an AIRFLOW_HOME kept in .demo/ (with its log): any number
# of times, the second run reuses the first's image.
demo: $(STAMP)
	$(PY) scripts/demo.py

# The emulator and a whole Airflow wired to it, on free ports, until Ctrl-C. DEV_HOME=<dir> keeps
# its AIRFLOW_HOME (database, runs, outputs, login); without it a throwaway one is removed at the end.
DEV_HOME ?=
dev: $(STAMP)
	$(PY) scripts/dev.py $(if $(DEV_HOME),--home "$(DEV_HOME)")

# The fast tests: unit and integration on the newest Airflow (a few minutes), no browser, no cluster.
test-fast: $(STAMP)
	$(PY) -m pytest -ra --durations=10 -m "not e2e" tests/unit tests/integration

# The browser test drives Debian's Chromium. With CI=true it must run, so it is installed here when
# missing; elsewhere the test skips and says why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$CI" = "true" ]; then \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium not installed: the browser test will skip (apt-get install chromium; CI=true installs it)"; \
	  fi; \
	fi

# The lowest supported Airflow, beside the newest: a second virtual environment.
LOWEST_AIRFLOW ?= 3.1.8
LOWEST_VENV := .venv-airflow-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed-stamp

$(LOWEST_STAMP): pyproject.toml $(STAMP)
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(LOWEST_VENV)/bin/python "apache-airflow==$(LOWEST_AIRFLOW)" -e ".[test]"
	touch $(LOWEST_STAMP)

# The package as users get it: the wheel and sdist built with the build backend pyproject.toml names,
# their metadata checked, the wheel installed (not editable) beside the same Airflow in a fresh
# virtual environment, and the demo (the emulator and a real DAG) run from it.
WHEEL_VENV := .venv-wheel
package: $(STAMP)
	rm -rf dist $(WHEEL_VENV)
	$(VENV)/bin/uv build --quiet --out-dir dist .
	$(VENV)/bin/twine check --strict dist/*
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(WHEEL_VENV)/bin/python \
	  "apache-airflow==$$($(PY) -c 'import airflow; print(airflow.__version__)')" dist/*.whl
	cd $(WHEEL_VENV) && bin/python $(CURDIR)/scripts/check_wheel.py
	$(WHEEL_VENV)/bin/python scripts/demo.py --output-dir $(WHEEL_VENV)/demo-output --home $(WHEEL_VENV)/demo-home

# The fast tests first: a failure there stops the run before the lowest Airflow's environment, the
# wheel and the end-to-end tests are built. Each test runs once per Airflow version.
test: test-fast
	$(MAKE) --no-print-directory $(LOWEST_STAMP) browser package
	@echo "== end to end on Airflow $$($(PY) -c 'import airflow; print(airflow.__version__)'): a real Airflow in separate processes =="
	$(PY) -m pytest -ra --durations=15 tests/e2e
	@echo "== the same unit and integration tests on the lowest supported Airflow ($(LOWEST_AIRFLOW)) =="
	$(LOWEST_VENV)/bin/python -m pytest -ra -m "not e2e" -p no:cacheprovider tests/unit tests/integration
	@echo "== in a real Airflow $(LOWEST_AIRFLOW): the extra links and the gallery, the ledger, crash safety =="
	$(LOWEST_VENV)/bin/python -m pytest -ra -p no:cacheprovider tests/e2e/test_extra_links.py \
	  tests/e2e/test_ledger_e2e.py \
	  tests/e2e/test_crash_safety.py::test_a_triggerer_killed_mid_wait_is_replaced_without_resubmitting \
	  tests/e2e/test_crash_safety.py::test_b_worker_killed_after_submit_retries_and_reconnects

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(WHEEL_VENV) dist demo-output .demo .pytest_cache .ruff_cache .mypy_cache
