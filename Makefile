# make lab   : set up the environment and open the course in JupyterLab
# make test  : set up the environment and run every test (unit tests + every notebook in quick mode)
# make bench : print the performance numbers quoted in the README

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A stamp file: reinstall only when the package's dependencies change.
STAMP  := $(VENV)/.installed

.PHONY: lab test test-unit test-notebooks bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

test: test-unit test-notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/

# Every notebook, top to bottom, in quick mode; cells marked NBVAL_CHECK_OUTPUT must match.
# Two notebooks run at once (-n 2), one thread each, so they do not fight over the cores.
test-notebooks: $(STAMP)
	SLM_QUICK=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		-n 2 --dist loadfile notebooks/

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_cpu_preset.py
	$(BIN)/python tests/benchmarks/bench_bpe.py

clean:
	rm -rf $(VENV) runs .pytest_cache
