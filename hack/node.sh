#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, for contributors: the node tier's cluster by hand.
#   hack/node.sh          builds what is missing (control plane, node binaries, images), starts the
#                         control plane and a real node (containerd, kubelet, kube-proxy, CoreDNS),
#                         prints the KUBECONFIG to use, and tears everything down on Ctrl-C.
# Needs root and the Debian packages .ci/run installs. Caches live in ~/.cache/poolbench.
set -euo pipefail
cd "$(dirname "$0")/.."
export POOLBENCH_K8S_BIN="${POOLBENCH_K8S_BIN:-$(hack/build-control-plane.sh | tail -n 1)}"
export POOLBENCH_NODE_BIN="${POOLBENCH_NODE_BIN:-$(hack/build-node.sh | tail -n 1)}"
export POOLBENCH_IMAGES="${POOLBENCH_IMAGES:-$(hack/build-images.sh | tail -n 1)}"
exec .venv/bin/python -m tests.harness.cluster
