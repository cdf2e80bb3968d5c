# All set-up happens here: a fresh machine needs only python3.12 (selected by .python-version) and make.
# node and npm are optional: with npm on PATH the set-up also builds the preview page; without it the
# page is skipped (with a note) and `make preview-page` builds it once node and npm are installed.
PY ?= python3.12
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The core alone (no prefect, no dask.distributed, no fastapi): `make test-core` proves it installs and
# passes its own tests without the orchestration stack.
CORE_VENV ?= .venv-core
CORE_STAMP := $(CORE_VENV)/.installed
# Tests run on 2 processes (pytest-xdist). The core and contract tiers test by test (--dist load: they
# have no costly module fixtures); the other tiers module by module (--dist loadscope: a module's tests
# on one worker, so its fixtures, e.g. the e2e stack or the browser and its servers, start once).
# (--dist loadgroup with xdist_group marks would be finer, but with pytest 9.2 it silently stops
# grouping: pytest-xdist issue 1386.)
XDIST ?= -n 2
WEB := flows/topozarr_flows/preview/web
PAGE := flows/topozarr_flows/preview/static/app.js
HAVE_NPM := $(shell command -v npm 2>/dev/null)
PAGE_IF_NPM := $(if $(HAVE_NPM),$(PAGE))

.PHONY: demo test test-quick test-core lint bench clean preview-page docs

# The preview page (maplibre-gl + zarr-layer, exact versions in package-lock.json), bundled by esbuild
# into flows/topozarr_flows/preview/static: no CDN at run time.
$(PAGE): $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/build.mjs $(wildcard $(WEB)/src/*) topozarr_core/viewer/colormaps.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run build

preview-page: $(PAGE)

$(STAMP): pyproject.toml constraints.txt | $(PAGE_IF_NPM)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)
	$(if $(HAVE_NPM),,@echo "note: npm not found: the preview page (topozarr-flows preview) is not built; install node and npm, then run 'make preview-page'")

demo: $(STAMP)
	$(BIN)/topozarr-flows demo

# The test tiers (tests/README.md): core, contract, flows, e2e, browser, repo.
# `make test` is what CI runs: the core tier in the core-only venv (make test-core), then every other
# tier in the full venv. tests/core runs once, there, but for tests/core/write/test_dask_path.py: its
# tests of the lazy levels' graph need plain dask (a core dependency) and run in both venvs; its tests on
# a LocalCluster need dask.distributed (the [dask] extra), so they skip in the core venv and run in the full one.
# The longest modules first (the e2e stack, the browser), so that the other worker is not left idle at the end.
test: test-core $(STAMP) $(PAGE_IF_NPM)
	$(BIN)/python -m pytest $(XDIST) --dist loadscope tests/e2e tests/browser tests/flows tests/contract \
		tests/repo tests/core/write/test_dask_path.py $(PYTEST_ARGS)

# The quick tier for local work: core, contract and repo, no servers (a couple of minutes).
test-quick: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) --dist load tests/core tests/contract tests/repo $(PYTEST_ARGS)

$(CORE_STAMP): pyproject.toml constraints.txt
	rm -rf $(CORE_VENV)
	$(PY) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/pip install -q --upgrade pip
	rm -rf build  # setuptools' build tree of the non-editable install: never reuse a stale one
	$(CORE_VENV)/bin/pip install -q -c constraints.txt ".[test-core]"
	touch $(CORE_STAMP)

# (PYTHONPATH unset: the core venv sees nothing but what it installed)
test-core: $(CORE_STAMP)
	@if env -u PYTHONPATH $(CORE_VENV)/bin/python -c "import prefect" 2>/dev/null; then \
		echo "$(CORE_VENV) must not have prefect: the core installs without the orchestration stack"; exit 1; fi
	cd tests && env -u PYTHONPATH ../$(CORE_VENV)/bin/python -c "import topozarr_core; assert 'site-packages' in topozarr_core.__file__"
	env -u PYTHONPATH $(CORE_VENV)/bin/python -m pytest $(XDIST) --dist load tests/core $(PYTEST_ARGS)

# ruff's checks (pyproject.toml [tool.ruff]); the formatter is not applied to the whole code base.
$(VENV)/.dev-installed: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_write.py

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or API reference fails the build.
$(VENV)/.docs-installed: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(CORE_VENV) demo-output $(WEB)/node_modules flows/topozarr_flows/preview/static site
