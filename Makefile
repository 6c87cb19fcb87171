# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PATH := $(CURDIR)/$(BIN):$(PATH)
# Prefect's and DVC's analytics are off in flows/__init__.py (every stage imports it; so does the
# project's Prefect server, python -m flows.server); plain dvc commands read .dvc/config's
# core.analytics = false.

.PHONY: install test browser format lint deploy serve demo demo-cluster clean ui ui-stop server-stop

install: $(STAMP)

# reinstall only when the dependencies change; torch==2.13.0 is the CPU wheel here
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# One shape for the code (ruff.toml): imports sorted and ruff's safe fixes applied; lint only checks
# (tests/test_lint.py runs it too, so CI holds it)
format: $(STAMP)
	$(BIN)/ruff check --fix .

lint: $(STAMP)
	$(BIN)/ruff check .

# The page tests open the pages in headless Chromium (tests/browser.py): Debian's, installed when it is
# missing and this is root on Debian; elsewhere install it yourself, or set CHROMIUM to a binary.
browser:
	@if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Chromium for the page tests (apt-get install chromium)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
		else \
			echo "the page tests need Chromium: sudo apt-get install chromium (or set CHROMIUM to a binary)"; exit 1; \
		fi; \
	fi

# The first stage starts the project's Prefect server (tasks/project_server.py) and the others reuse
# it; it stops by itself after 15 idle minutes, or with `make server-stop`. A server you point
# PREFECT_API_URL at is used instead.
demo: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/dvc repro && MLFLOW_PORT=$(MLFLOW_PORT) $(BIN)/python -m flows summary; \
	rc=$$?; echo "pipeline finished in $$(( $$(date +%s) - start )) s"; exit $$rc

# The cross-validation on a work pool: PostgreSQL, the Prefect and MLflow servers on it and two process
# workers on localhost (a CPU core each), the cv stage through them; everything stops at the end
# (README, "The study on several machines"). DEMO_CLUSTER_ARGS=--keep: stop after Enter.
demo-cluster: $(STAMP)
	$(BIN)/python -m flows.cluster demo $(DEMO_CLUSTER_ARGS)

server-stop:
	$(BIN)/python -m flows.server stop

clean:
	rm -rf data models mlruns mlartifacts mlflow.db dvc-storage .cluster

# --- the UIs: a Prefect server and an MLflow server in the background (make ui-stop ends them) ---
UI_DIR     := .ui
PREFECT_PORT ?= 4200
MLFLOW_PORT  ?= 5000
PREFECT_UI := http://127.0.0.1:$(PREFECT_PORT)
MLFLOW_UI  := http://127.0.0.1:$(MLFLOW_PORT)
SETSID     := $(shell command -v setsid)
ANSWERS     = $(BIN)/python -c "import urllib.request as r; r.urlopen('$(1)', timeout=2)" 2>/dev/null

# ui_start NAME URL COMMAND: start it in its own process group (ui-stop ends its workers too), PID
# and log under .ui/; unless it already runs, or another server already answers at URL
define ui_start
	@if [ -f $(UI_DIR)/$(1).pid ] && kill -0 $$(cat $(UI_DIR)/$(1).pid) 2>/dev/null; then \
		echo "$(1): already running (pid $$(cat $(UI_DIR)/$(1).pid))"; \
	elif $(call ANSWERS,$(2)); then \
		rm -f $(UI_DIR)/$(1).pid; echo "$(1): a server already answers at $(2); using it (ui-stop leaves it)"; \
	else \
		$(SETSID) $(3) > $(UI_DIR)/$(1).log 2>&1 < /dev/null & echo $$! > $(UI_DIR)/$(1).pid; \
		echo "$(1): starting (pid $$(cat $(UI_DIR)/$(1).pid), log $(UI_DIR)/$(1).log)"; \
	fi
endef

# ui_wait NAME URL: until URL answers; stop with the log's tail if the server dies or 120 s pass
define ui_wait
	@for i in $$(seq 240); do \
		$(call ANSWERS,$(2)) && exit 0; \
		if [ -f $(UI_DIR)/$(1).pid ] && ! kill -0 $$(cat $(UI_DIR)/$(1).pid) 2>/dev/null; then break; fi; \
		sleep 0.5; \
	done; \
	echo "$(1) did not come up at $(2); the end of $(UI_DIR)/$(1).log:"; tail -20 $(UI_DIR)/$(1).log; exit 1
endef

ui: $(STAMP)
	@mkdir -p $(UI_DIR) && echo '*' > $(UI_DIR)/.gitignore
	@$(BIN)/python -m flows.server start --keep --port $(PREFECT_PORT)
	$(call ui_start,mlflow,$(MLFLOW_UI)/health,env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server \
		--host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--artifacts-destination $(CURDIR)/mlartifacts)
	$(call ui_wait,mlflow,$(MLFLOW_UI)/health)
	@echo
	@echo "MLflow UI: $(MLFLOW_UI); the Prefect UI is the project's server above (the stages report to it"
	@echo "without PREFECT_API_URL). Then: make deploy (deployments you start from the UI); make ui-stop ends both."

ui-stop:
	@$(BIN)/python -m flows.server stop
	@for name in mlflow; do \
		if [ -f $(UI_DIR)/$$name.pid ]; then \
			pid=$$(cat $(UI_DIR)/$$name.pid); \
			kill -TERM -- -$$pid 2>/dev/null || kill -TERM $$pid 2>/dev/null || true; \
			rm -f $(UI_DIR)/$$name.pid; echo "$$name: stopped (pid $$pid)"; \
		else \
			echo "$$name: not started by make ui (no $(UI_DIR)/$$name.pid)"; \
		fi; \
	done

# the deployments (flows/deploy.py): runs started from the UI execute here, one at a time
# the deployments: one name a concept (deploy: Prefect deployments; serve: a model over HTTP, lgg-serve;
# server: the Prefect server). `make serve` was this target's name until 2026-12; it says so for a release.
deploy: $(STAMP)
	$(BIN)/python -m flows.deploy

serve:
	@echo "make serve is now make deploy (it serves the Prefect deployments; lgg-serve serves a model)"; exit 2

# --- the GPU check (benchmarks/README.md, "GPU check"): every GPU figure in one run that stops itself
# inside 420 s, on the GPU machine's own torch (no install step: it would pull torch). Rehearse it on a
# CPU with GPU_CHECK_ARGS="--device cpu --tiny"; benchmarks/gpu_wheels.sh fetches .gpu-wheels/ first.
.PHONY: gpu-check
gpu-check:
	@test -n "$(OUT)" || { echo "usage: make gpu-check OUT=DIR [GPU_CHECK_ARGS='--device cpu --tiny']"; exit 2; }
	bash benchmarks/gpu_check.sh $(GPU_CHECK_ARGS) $(OUT)
