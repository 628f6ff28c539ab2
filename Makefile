# make lab   : set up the environment and open the course in JupyterLab
# make test  : set up the environment and run every test (unit tests + every notebook in quick mode
#              + the lessons in JupyterLab in headless Chromium, when Chromium is installed)
# make test-browser : only the JupyterLab tests (see tests/browser/conftest.py for their settings)
# make bench : print the performance numbers quoted in the README

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A stamp file: reinstall only when the package's dependencies change.
STAMP  := $(VENV)/.installed

# The Chromium the browser tests drive (Debian's package: apt-get install chromium).
CHROMIUM ?= $(or $(SLM_CHROMIUM),$(shell command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null))

.PHONY: lab test test-unit test-notebooks test-browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

test: test-unit test-notebooks test-browser

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/

# Every notebook, top to bottom, in quick mode; cells marked NBVAL_CHECK_OUTPUT must match.
# Two notebooks run at once (-n 2), one thread each, so they do not fight over the cores.
test-notebooks: $(STAMP)
	SLM_QUICK=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		-n 2 --dist loadfile notebooks/

# JupyterLab on 127.0.0.1 driven in headless Chromium: run lessons 2 and 9 from the Run menu, check
# there is no traceback, the live loss plot is drawn and the sampler widget generates text.
# Screenshots go to a temporary folder; SLM_SCREENSHOTS=images refreshes the README's pictures.
test-browser: $(STAMP)
ifeq ($(strip $(CHROMIUM)),)
	@echo "Chromium not found: skipping the browser tests (install Debian's chromium to run them)"
else
	SLM_CHROMIUM=$(CHROMIUM) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser
endif

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_cpu_preset.py
	$(BIN)/python tests/benchmarks/bench_bpe.py
	$(BIN)/python tests/benchmarks/bench_kv_cache.py
	$(BIN)/python tests/benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
