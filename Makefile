# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo demo-broken bench lint clean workflows image-check controlplane e2e-kind

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

# Argo's own CLI, built from its Go module, so the tests can check that `mlchaos argo validate` agrees
# with `argo lint --offline`. The module ships without the UI's build output, which the CLI embeds:
# a placeholder page stands in for it. About 9 minutes on 2 cores the first time, then cached in build/.
ARGO_MODULE := github.com/argoproj/argo-workflows/v4
ARGO_VERSION := v4.0.5
ARGO := build/bin/argo

# The Kubernetes control plane the tests run against: kube-apiserver and kube-controller-manager from the
# k8s.io/kubernetes module, etcd from go.etcd.io/etcd (tools/controlplane/go.mod pins them). Built
# once into build/controlplane; kubelets are simulated by tests/kube_agent.py.
CONTROLPLANE := build/controlplane/.built

# Argo Rollouts' own Rollout CRD, taken from its Go module: the tests install it in their control plane.
ROLLOUTS_MODULE := github.com/argoproj/argo-rollouts
ROLLOUTS_VERSION := v1.8.3
ROLLOUTS_CRD := build/crds/rollout-crd.yaml
# ... and its controller, built from the same module (about 4½ minutes the first time), then cached.
ROLLOUTS_CONTROLLER := build/bin/rollouts-controller
# The telemetry the tests read back: an OpenTelemetry Collector (OTLP in, OTLP JSON lines to a file out; the
# smallest distribution, tools/otelcol, in the shape the collector builder writes), Prometheus and promtool,
# and the Pushgateway, each built from its Go module.
OTELCOL := build/bin/otelcol-mlchaos
PROMETHEUS_MODULE := github.com/prometheus/prometheus
PROMETHEUS_VERSION := v0.316.0
PROMETHEUS := build/bin/prometheus
PROMTOOL := build/bin/promtool
PUSHGATEWAY_MODULE := github.com/prometheus/pushgateway
PUSHGATEWAY_VERSION := v1.11.5
PUSHGATEWAY := build/bin/pushgateway
# Debian's Chromium renders the scorecard headless in the tests.
CHROMIUM := /usr/bin/chromium
TELEMETRY := $(OTELCOL) $(PROMETHEUS) $(PROMTOOL) $(PUSHGATEWAY) $(CHROMIUM)
# The fault proxy in front of dependencies (toxiproxy, from its Go module: pin the version, the module
# proxy's "latest" is years old) and the example's online feature store (Debian's Redis).
TOXIPROXY_MODULE := github.com/Shopify/toxiproxy/v2
TOXIPROXY_VERSION := v2.12.0
TOXIPROXY := build/bin/toxiproxy-server
REDIS := /usr/bin/redis-server
# Apache Kafka 4.4 (KRaft) for the streaming example: its jars resolved from Maven Central once (tools/kafka/pom.xml).
KAFKA_JARS := build/kafka/.jars
STREAMING := $(TOXIPROXY) $(REDIS) $(KAFKA_JARS)

# Tests run side by side in 6 processes (pytest-xdist, idle workers steal queued tests): most of them
# wait on servers, recoveries and SLO windows, so 6 workers keep 2 cores busy. TEST_WORKERS=0 runs
# them in this process, one by one.
TEST_WORKERS ?= 6

test: setup $(ARGO) $(CONTROLPLANE) $(ROLLOUTS_CRD) $(ROLLOUTS_CONTROLLER) $(TELEMETRY) $(STREAMING)
	ARGO_BIN=$(CURDIR)/$(ARGO) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

$(ARGO):
	go mod download $(ARGO_MODULE)@$(ARGO_VERSION)
	rm -rf build/argo-src && mkdir -p build/bin
	cp -r "$$(go env GOMODCACHE)/$(ARGO_MODULE)@$(ARGO_VERSION)" build/argo-src && chmod -R u+w build/argo-src
	mkdir -p build/argo-src/ui/dist/app && echo "argo lint only" > build/argo-src/ui/dist/app/index.html
	cd build/argo-src && go build -trimpath -o $(CURDIR)/$(ARGO) ./cmd/argo
	rm -rf build/argo-src

controlplane: $(CONTROLPLANE)

$(ROLLOUTS_CRD):
	go mod download $(ROLLOUTS_MODULE)@$(ROLLOUTS_VERSION)
	mkdir -p build/crds
	cp "$$(go env GOMODCACHE)/$(ROLLOUTS_MODULE)@$(ROLLOUTS_VERSION)"/manifests/crds/*-crd.yaml build/crds/
	chmod u+w build/crds/*

$(ROLLOUTS_CONTROLLER):
	go mod download $(ROLLOUTS_MODULE)@$(ROLLOUTS_VERSION)
	rm -rf build/rollouts-src && mkdir -p build/bin
	cp -r "$$(go env GOMODCACHE)/$(ROLLOUTS_MODULE)@$(ROLLOUTS_VERSION)" build/rollouts-src && chmod -R u+w build/rollouts-src
	cd build/rollouts-src && go build -trimpath -o $(CURDIR)/$(ROLLOUTS_CONTROLLER) ./cmd/rollouts-controller
	rm -rf build/rollouts-src

$(OTELCOL): tools/otelcol/go.mod tools/otelcol/go.sum tools/otelcol/main.go tools/otelcol/components.go
	mkdir -p build/bin
	cd tools/otelcol && go build -trimpath -ldflags="-s -w" -o $(CURDIR)/$(OTELCOL) .

# Prometheus 3 from its module: the UI's build output is not in it (the API needs none), and
# remove_all_sd leaves out the cloud service discoveries (static and file targets are all the tests use).
$(PROMETHEUS) $(PROMTOOL) &:
	go mod download $(PROMETHEUS_MODULE)@$(PROMETHEUS_VERSION)
	rm -rf build/prometheus-src && mkdir -p build/bin
	cp -r "$$(go env GOMODCACHE)/$(PROMETHEUS_MODULE)@$(PROMETHEUS_VERSION)" build/prometheus-src
	chmod -R u+w build/prometheus-src
	cd build/prometheus-src && GOWORK=off CGO_ENABLED=0 go build -trimpath -tags remove_all_sd \
		-ldflags "-s -w -X github.com/prometheus/common/version.Version=$$(cat VERSION)" \
		-o $(CURDIR)/build/bin/ ./cmd/prometheus ./cmd/promtool
	rm -rf build/prometheus-src

$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

$(KAFKA_JARS): tools/kafka/pom.xml
	rm -rf build/kafka/jars && mkdir -p build/kafka
	mvn -q -B -f tools/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(CURDIR)/build/kafka/jars
	touch $@

$(REDIS):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server

$(TOXIPROXY):
	go mod download $(TOXIPROXY_MODULE)@$(TOXIPROXY_VERSION)
	rm -rf build/toxiproxy-src && mkdir -p build/bin
	cp -r "$$(go mod download -json $(TOXIPROXY_MODULE)@$(TOXIPROXY_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$$/\1/p')" \
		build/toxiproxy-src
	chmod -R u+w build/toxiproxy-src
	cd build/toxiproxy-src && GOWORK=off CGO_ENABLED=0 go build -buildvcs=false -trimpath \
		-ldflags "-s -w -X $(TOXIPROXY_MODULE).Version=$(TOXIPROXY_VERSION)" -o $(CURDIR)/$(TOXIPROXY) ./cmd/server
	rm -rf build/toxiproxy-src

$(PUSHGATEWAY):
	go mod download $(PUSHGATEWAY_MODULE)@$(PUSHGATEWAY_VERSION)
	rm -rf build/pushgateway-src && mkdir -p build/bin
	cp -r "$$(go env GOMODCACHE)/$(PUSHGATEWAY_MODULE)@$(PUSHGATEWAY_VERSION)" build/pushgateway-src
	chmod -R u+w build/pushgateway-src
	cd build/pushgateway-src && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(CURDIR)/$(PUSHGATEWAY) .
	rm -rf build/pushgateway-src

$(CONTROLPLANE): tools/controlplane/go.mod tools/controlplane/go.sum tools/controlplane/cmd/etcd/main.go
	mkdir -p build/controlplane
	cd tools/controlplane && go build -trimpath -o $(CURDIR)/build/controlplane/ \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager ./cmd/etcd
	touch $@

# The Kubernetes tests against a real cluster with real kubelets (kind, or any cluster KUBECONFIG names
# with cluster-admin rights), instead of the control plane built here: tests that need the simulated
# kubelets' knobs (marked simulated_kubelet) are left out; namespaces the tests create are deleted.
#   kind create cluster && make e2e-kind KUBECONFIG=$$HOME/.kube/config
E2E_TESTS := tests/test_kube_controlplane.py tests/test_pod_delete_kubernetes.py tests/test_canary_kubernetes.py \
	tests/test_gate_kubernetes.py tests/test_airflow_kubernetes.py tests/test_k8s_manifests.py
e2e-kind: setup $(ROLLOUTS_CRD)
	@test -n "$(KUBECONFIG)" || { echo "make e2e-kind: set KUBECONFIG to the cluster (e.g. kind get kubeconfig > kind.yaml)"; exit 2; }
	MLCHAOS_E2E_KUBECONFIG=$(abspath $(KUBECONFIG)) $(BIN)/python -m pytest -q -n 2 -m "not simulated_kubelet" $(E2E_TESTS) $(PYTEST_ARGS)

# Build the step image with buildah (no daemon) and run a stage inside it: opt-in, as root; about
# 3½ minutes the first time (debootstrap makes the base), 2 after. See docker/image-check.sh.
image-check: setup
	docker/image-check.sh

# Render the Argo templates and example workflows from their Hera sources (the tests compare them).
workflows: setup
	$(BIN)/python -m mlchaos_steps.hera.render

demo: setup
	$(BIN)/mlchaos demo

demo-broken: setup
	$(BIN)/mlchaos demo --broken

bench: setup $(CONTROLPLANE) $(TELEMETRY) $(STREAMING)
	$(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check mlchaos_steps tests benchmarks dags workflows

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
