# CCM: `make run` sets up and runs everything; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Debian packages WeasyPrint needs (pango, HarfBuzz subsetting, fonts), and poppler-utils, whose
# pdftoppm draws a document's first page for the customer portal on phones (the tests also read
# the print cover sheets' QR marks back from pages it draws).
SYSTEM_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core fonts-liberation2 poppler-utils
# Extra Debian packages the test suite needs: Chromium for the browser tests.
TEST_SYSTEM_PACKAGES := chromium
# axe-core (accessibility rules) for the browser crawler, from npm into var/ (no lock file, not
# committed); tests/browser/test_crawl.py injects axe.min.js into every page it visits.
AXE_CORE_VERSION := 4.10.3
AXE_JS := var/node/node_modules/axe-core/axe.min.js

.PHONY: run test lint typecheck system-deps test-system-deps test-js-deps install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

system-deps:
	@$(call ensure_debs,$(SYSTEM_PACKAGES))

test-system-deps:
	@$(call ensure_debs,$(SYSTEM_PACKAGES) $(TEST_SYSTEM_PACKAGES))
	@if ! command -v npm >/dev/null; then $(call ensure_debs,npm); fi

$(AXE_JS):
	@mkdir -p var/node
	npm install --no-save --no-package-lock --no-audit --no-fund --silent --prefix var/node axe-core@$(AXE_CORE_VERSION)

test-js-deps: $(AXE_JS)

define ensure_debs
	missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "CCM needs these Debian packages:$$missing"; \
	    echo "Install them as root:  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

run: system-deps install
	@mkdir -p var
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py run_ccm --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy ccm documents notifications cases

test: test-system-deps test-js-deps install-dev lint typecheck
	$(BIN)/pytest

bench: system-deps install-dev
	$(BIN)/python bench/render.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/compose_text.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
