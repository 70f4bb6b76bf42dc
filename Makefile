# Quick start:  make run   (set up, then the whole pipeline on the embedded default)
#               make test  (set up, then the test suite)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test data clean-results

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e ".[test,oracles]"
	@# pip byte-compiles one file at a time; compileall uses every core (about half the install time)
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

run: $(VENV)/.installed
	PYTHON=$(PY) bash bash_script/run_all.sh

test: $(VENV)/.installed
	$(PY) -m pytest -q

data: $(VENV)/.installed
	PYTHON=$(PY) bash bash_script/prepare_synthetic.sh

clean-results:
	rm -rf results
