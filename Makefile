# All set-up happens here: a fresh machine needs only python3.12 (selected by .python-version) and make.
PY ?= python3.12
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := flows/preview/web
PAGE := flows/preview/static/app.js

.PHONY: demo test bench clean preview-page

# The preview page (maplibre-gl + zarr-layer, exact versions in package-lock.json), bundled by esbuild
# into flows/preview/static: no CDN at run time.
$(PAGE): $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/build.mjs $(wildcard $(WEB)/src/*) topozarr_core/colormaps.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run build

preview-page: $(PAGE)

$(STAMP): pyproject.toml constraints.txt | $(PAGE)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/topozarr-flows demo

test: $(STAMP) $(PAGE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_write.py

clean:
	rm -rf $(VENV) demo-output $(WEB)/node_modules flows/preview/static
