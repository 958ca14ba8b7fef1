# kube-iam: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
TOOLS := .local/tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_FROZEN := 1
RUN := $(UV) run --frozen --quiet

# The local control plane's admin kubeconfig, used unless KUBECONFIG names another cluster.
LOCAL_KUBECONFIG := $(CURDIR)/.local/kubeconfig
KUBECTL := $(if $(wildcard .local/bin/kubectl),.local/bin/kubectl,kubectl)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(UV):
	@command -v python3 >/dev/null || { echo "python3 (3.11 or newer) is required" >&2; exit 1; }
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	@touch $@

.PHONY: install
install: .venv/.synced ## install the locked Python dependencies into .venv

.PHONY: crds
crds: install ## regenerate crds/ (and its copy in deploy/crds) from the API models
	$(RUN) kube-iam crds --dir crds
	$(RUN) kube-iam crds --dir deploy/crds

.PHONY: cluster-up
cluster-up: install ## start the local control plane (builds it on first use) and install the CRDs
	$(RUN) kube-iam cluster up

.PHONY: cluster-down
cluster-down: install ## stop every process of the local control plane
	$(RUN) kube-iam cluster down

.PHONY: cluster-status
cluster-status: install ## say whether the local control plane runs
	$(RUN) kube-iam cluster status

.PHONY: run
run: install ## run the operator (against the local control plane unless KUBECONFIG is set)
ifeq ($(strip $(KUBECONFIG)),)
	$(RUN) kube-iam cluster up
	@echo
	@echo "From another terminal:"
	@echo "  export KUBECONFIG=$(LOCAL_KUBECONFIG) PATH=$(CURDIR)/.local/bin:\$$PATH"
	@echo "  kubectl apply -f examples/ && kubectl get iam"
	@echo
	KUBECONFIG=$(LOCAL_KUBECONFIG) $(RUN) kube-iam run
else
	$(KUBECTL) apply --server-side --force-conflicts -f crds/
	$(RUN) kube-iam run
endif

.PHONY: lint
lint: install ## ruff (lint and format check) and the import layering contract
	$(RUN) ruff check operator tests
	$(RUN) ruff format --check operator tests
	$(RUN) lint-imports

.PHONY: typecheck
typecheck: install ## mypy --strict over the package
	$(RUN) mypy

.PHONY: unit
unit: install ## the fast tests, without a cluster
	$(RUN) pytest tests/unit

.PHONY: test
test: lint typecheck ## lint, type-check and the whole suite against the real local control plane
	$(RUN) pytest

.PHONY: clean
clean: cluster-down ## stop the cluster and remove local state (the binary cache stays)
	rm -rf .local .venv .pytest_cache .mypy_cache .ruff_cache
