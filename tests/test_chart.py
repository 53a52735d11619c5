"""The Helm chart renders to the same objects as manifests/ (helm built by hack/build-helm.sh)."""

import os
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.harness.builds import ensure

pytestmark = pytest.mark.helm


def helm() -> str:
    path = str(ensure("POOLBENCH_HELM"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm is not available at {path}: run hack/build-helm.sh")
    return path


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm(), "template", "poolbench", str(ROOT / "charts/poolbench"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def key(obj: dict[str, Any]) -> tuple[str, str | None, str]:
    return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]


def manifests() -> dict[tuple[str, str | None, str], dict[str, Any]]:
    docs = []
    for name in ("rbac.yaml", "operator.yaml"):
        docs += [d for d in yaml.safe_load_all((ROOT / "manifests" / name).read_text()) if d]
    return {key(d): d for d in docs}


def test_chart_renders_the_same_objects_as_manifests() -> None:
    rendered = {key(d): d for d in render()}
    expected = manifests()
    assert set(rendered) == set(expected)
    for k, obj in expected.items():
        assert rendered[k] == obj, k


def test_chart_crd_is_the_generated_crd() -> None:
    assert (ROOT / "charts/poolbench/crds/poolbenchmarks.yaml").read_text() == (ROOT / "manifests/crd.yaml").read_text()


def test_watched_namespaces_bind_children_rbac_per_namespace() -> None:
    rendered = render("--set", "watchNamespaces={team-a,team-b}", "--set", "image.workload=reg/w:1")
    bindings = [
        d for d in rendered if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "poolbench-operator-children"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert not [
        d
        for d in rendered
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "poolbench-operator-children"
    ]
    deploy = next(d for d in rendered if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "--namespace=team-a" in container["args"]
    assert "--all-namespaces" not in container["args"]
    assert container["env"][0]["value"] == "reg/w:1"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_metrics_port_service_and_monitors() -> None:
    default = {key(d): d for d in render()}
    service = default[("Service", "poolbench-system", "poolbench-operator-metrics")]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics"}]
    assert not [k for k in default if k[0] in ("ServiceMonitor", "PodMonitor")]
    monitored = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true")
    service_monitor = next(d for d in monitored if d["kind"] == "ServiceMonitor")
    pod_monitor = next(d for d in monitored if d["kind"] == "PodMonitor")
    assert service_monitor["apiVersion"] == pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert set(service_monitor["spec"]["selector"]["matchLabels"].items()) <= set(service["metadata"]["labels"].items())
    assert pod_monitor["spec"]["podMetricsEndpoints"][0] == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "15s",
        "honorLabels": True,
    }
    off = render("--set", "metrics.enabled=false")
    assert not [d for d in off if d["kind"] == "Service"]
    container = next(d for d in off if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert {"name": "POOLBENCH_METRICS_PORT", "value": "0"} in container["env"]
