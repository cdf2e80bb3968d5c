# All set-up happens here: a fresh machine needs only python3.12 (selected by .python-version) and make.
# node and npm are optional: with npm on PATH the set-up also builds the preview page; without it the
# page is skipped (with a note) and `make preview-page` builds it once node and npm are installed.
PY ?= python3.12
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := flows/topozarr_flows/preview/web
PAGE := flows/topozarr_flows/preview/static/app.js
HAVE_NPM := $(shell command -v npm 2>/dev/null)
PAGE_IF_NPM := $(if $(HAVE_NPM),$(PAGE))

.PHONY: demo test bench clean preview-page docs

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

test: $(STAMP) $(PAGE_IF_NPM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_write.py

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or API reference fails the build.
$(VENV)/.docs-installed: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) demo-output $(WEB)/node_modules flows/topozarr_flows/preview/static site
