# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PATH := $(CURDIR)/$(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: install test demo clean

install: $(STAMP)

# reinstall only when the dependencies change; torch==2.13.0 is the CPU wheel here
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/dvc repro && \
	echo && echo "split (data/prepared/summary.json):" && \
	$(BIN)/python -c "import json; s = json.load(open('data/prepared/summary.json')); print(json.dumps(s['splits']))" && \
	echo && $(BIN)/dvc metrics show && \
	echo && echo "pipeline finished in $$(( $$(date +%s) - start )) s; curves: dvc plots show (writes dvc_plots/index.html)"

clean:
	rm -rf data models metrics mlruns mlflow.db
