# poolbench on kind. Needs docker, kind, kubectl (and helm for `deploy-helm`).
CLUSTER ?= poolbench
EXAMPLE ?= manifests/examples/small.yaml

.PHONY: setup test lint crd monitoring krew-archive docs-reference docs kind-up images kind-load deploy deploy-helm demo kind-down

setup:
	scripts/setup

test:
	scripts/test

lint:
	scripts/lint

crd:  ## regenerate the CRD from the spec model
	.venv/bin/poolbench crd > manifests/crd.yaml
	cp manifests/crd.yaml charts/poolbench/crds/poolbenchmarks.yaml

monitoring:  ## regenerate the chart's alert rules and Grafana dashboard from the operator's metric names
	.venv/bin/poolbench alerts --helm > charts/poolbench/files/rules.yaml
	.venv/bin/poolbench dashboard > charts/poolbench/files/dashboard.json

# The archive plugins/poolbench.yaml names (its sha256 is there): the same bytes on every machine.
DIST ?= dist
krew-archive:  ## the krew plugin's archive: the kubectl-poolbench launcher
	mkdir -p $(DIST)
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u=rwx,go=rx -C plugins \
	  -cf - kubectl-poolbench | gzip -9n > $(DIST)/kubectl-poolbench.tar.gz
	sha256sum $(DIST)/kubectl-poolbench.tar.gz

docs-reference:  ## regenerate the spec reference page from the spec model
	.venv/bin/poolbench reference > docs/reference/spec.md

docs:  ## build the documentation site into site/ (strict: a broken link fails)
	.venv/bin/mkdocs build --strict

kind-up:
	kind create cluster --name $(CLUSTER) --config kind-config.yaml

images:
	docker build --target operator -t poolbench-operator:dev .
	docker build --target workload -t poolbench-workload:dev .

kind-load:
	kind load docker-image --name $(CLUSTER) poolbench-operator:dev poolbench-workload:dev

deploy:
	kubectl apply -f manifests/crd.yaml
	kubectl apply -f manifests/rbac.yaml -f manifests/operator.yaml
	kubectl -n poolbench-system rollout status deployment/poolbench-operator --timeout=120s

deploy-helm:
	helm upgrade --install poolbench charts/poolbench

demo:
	kubectl apply -f $(EXAMPLE)
	kubectl get poolbenchmarks -o wide -w

kind-down:
	kind delete cluster --name $(CLUSTER)
