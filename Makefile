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

.PHONY: docs
docs: install ## regenerate the settings table in docs/settings.md from the settings models
	$(RUN) kube-iam settings --write docs/settings.md

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
run: install ## run the operator, its webhook and the token server (on the local control plane unless KUBECONFIG names another cluster)
	@# The local control plane is recognised by its kubeconfig, whatever KUBECONFIG says: there,
	@# the admission webhook and the token server run beside the operator as processes of their
	@# own, as in deploy/;
	@# another cluster gets its CRDs and the operator alone. Ctrl-C stops everything it started.
	$(RUN) python -m kubeiam.devcluster.local_run

.PHONY: run-as-deployed
run-as-deployed: install ## install deploy/ into the local control plane and run the operator as its ServiceAccount
	$(RUN) kube-iam cluster up
	$(RUN) python -m kubeiam.devcluster.install --kubeconfig $(LOCAL_KUBECONFIG) --out .local
	set -a && . .local/operator.env && KUBECONFIG=$(CURDIR)/.local/operator.kubeconfig \
		$(RUN) kube-iam run --liveness=http://127.0.0.1:8080/healthz

.PHONY: lint
lint: install ## ruff (lint and format check) and the import layering contract
	$(RUN) ruff check operator tests bench
	$(RUN) ruff format --check operator tests bench
	$(RUN) lint-imports

.PHONY: typecheck
typecheck: install ## mypy --strict over the package and the bench
	$(RUN) mypy

.PHONY: unit
unit: install ## the fast tests, without a cluster
	$(RUN) pytest tests/unit

.PHONY: test
test: lint typecheck ## lint, type-check and the whole suite against the real local control plane
	$(RUN) pytest

# make bench: kube-iam's figures beside the API server's floor, on a control plane of its own in
# .local/bench-cluster; the token server's beside its same-stack floor and Ory Hydra (vegeta and
# Hydra are built on first use, docs/performance.md#token-figures). BENCH_SCALE=0.1 is a quick
# run; BENCH_PROFILE=1 samples the operator and the token server.
BENCH_SCALE ?= 1
BENCH_PROFILE ?=

.PHONY: bench
bench: install ## benchmarks beside the API server's floor (tokens: beside Hydra); raw figures in .local/bench/ (BENCH_SCALE=0.1: quick)
	BENCH_SCALE=$(BENCH_SCALE) BENCH_PROFILE=$(BENCH_PROFILE) $(RUN) python -m bench

# make kind-e2e: the image, deploy/ and the end-to-end tests on a kind cluster (needs Docker).
KIND_CLUSTER ?= kube-iam-e2e
E2E_IMAGE := kube-iam:e2e
E2E_DIR := $(CURDIR)/.local/kind-e2e
E2E_KUBECONFIG := $(E2E_DIR)/kubeconfig
E2E_KUBECTL = $(KUBECTL) --kubeconfig=$(E2E_KUBECONFIG)

.PHONY: kind-prerequisites
kind-prerequisites:
	@command -v docker >/dev/null 2>&1 || { echo "make kind-e2e needs Docker and kind: docker is not installed. Without Docker, 'make test' runs the same tests on the local control plane." >&2; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "make kind-e2e needs a running Docker engine: 'docker info' failed. Without Docker, 'make test' runs the same tests on the local control plane." >&2; exit 2; }
	@command -v kind >/dev/null 2>&1 || { echo "make kind-e2e needs kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation): it is not on PATH." >&2; exit 2; }

.PHONY: kind-e2e
kind-e2e: kind-prerequisites install ## build the image, run deploy/ on kind and the end-to-end tests against it (needs Docker)
	docker build --file deploy/Dockerfile --build-arg UV_VERSION=$(UV_VERSION) --tag $(E2E_IMAGE) .
	mkdir -p $(E2E_DIR)
	kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
		|| kind create cluster --name $(KIND_CLUSTER) --wait 180s --kubeconfig $(E2E_KUBECONFIG)
	kind export kubeconfig --name $(KIND_CLUSTER) --kubeconfig $(E2E_KUBECONFIG)
	kind load docker-image $(E2E_IMAGE) --name $(KIND_CLUSTER)
	@# An overlay of deploy/: the image just loaded, and the settings the tests expect (the
	@# organisation, and the Secret audit as fast at rest as in a hurry: tests/integration/conftest.py).
	printf '%s\n' \
		'apiVersion: kustomize.config.k8s.io/v1beta1' \
		'kind: Kustomization' \
		'resources: [../../deploy]' \
		'images: [{name: kube-iam, newName: kube-iam, newTag: e2e}]' \
		'patches:' \
		'  - target: {kind: ConfigMap, name: kube-iam-settings}' \
		'    patch: "{apiVersion: v1, kind: ConfigMap, metadata: {name: kube-iam-settings}, data: {KUBEIAM_ORGANIZATION: acme, KUBEIAM_SECRET_AUDIT_REST_RATE: \"1200\", KUBEIAM_SECRET_AUDIT_REST_PASS: \"10\"}}"' \
		> $(E2E_DIR)/kustomization.yaml
	$(E2E_KUBECTL) apply --kustomize deploy/crds
	$(E2E_KUBECTL) wait customresourcedefinitions --selector=app.kubernetes.io/part-of=kube-iam \
		--for=condition=Established --timeout=60s
	$(E2E_KUBECTL) apply --kustomize $(E2E_DIR)
	@# The webhook's serving certificate and its CA in the webhook configurations (no cert-manager).
	$(RUN) kube-iam webhook-cert --kubeconfig $(E2E_KUBECONFIG) | $(E2E_KUBECTL) apply -f -
	$(E2E_KUBECTL) rollout status deployment/kube-iam deployment/kube-iam-webhook \
		--namespace kube-iam-system --timeout=300s
	@# The operator runs in the cluster: the tests start none, and skip those that need their own.
	status=0; KUBECONFIG=$(E2E_KUBECONFIG) KUBEIAM_E2E_EXTERNAL_OPERATOR=1 \
		KUBEIAM_TEST_STATE_DIR=$(E2E_DIR) $(RUN) pytest tests/integration \
		--ignore=tests/integration/test_devcluster.py || status=$$?; \
	if [ -z "$(KEEP_KIND)" ]; then kind delete cluster --name $(KIND_CLUSTER); fi; \
	exit $$status

.PHONY: clean
clean: cluster-down ## stop the cluster and remove local state (the binary cache stays)
	rm -rf .local .venv .pytest_cache .mypy_cache .ruff_cache
