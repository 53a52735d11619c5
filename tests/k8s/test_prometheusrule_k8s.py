"""The chart's PrometheusRule, ServiceMonitor and PodMonitor against a real API server with the
Prometheus Operator's CRDs installed (fetched by hack/fetch-prometheus-operator-crds.sh at the pinned
version): a server-side dry run accepts each as rendered and stores nothing, and the same dry run
refuses a rule the CRD's schema does not allow."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.harness.builds import ensure
from tests.harness.controlplane import ControlPlane
from tests.harness.kube import Kube
from tests.harness.operator import install_crd, kubectl
from tests.test_chart import render

pytestmark = pytest.mark.k8s

#: The Prometheus Operator's kinds the chart renders (plural names: the CRD's and its file's).
MONITORING_KINDS = ("prometheusrules", "servicemonitors", "podmonitors")


@pytest.fixture(scope="module")
def prometheus_rule_crd(control_plane: ControlPlane, kube: Kube) -> ControlPlane:
    crds = ensure("POOLBENCH_PROMETHEUS_CRDS")
    for plural in MONITORING_KINDS:
        crd = f"{plural}.monitoring.coreos.com"
        install_crd(control_plane, kube, crds / f"monitoring.coreos.com_{plural}.yaml", crd)
    return control_plane


def test_rendered_service_and_pod_monitors_pass_a_server_side_dry_run(
    prometheus_rule_crd: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    rendered = render(
        "--show-only",
        "templates/metrics.yaml",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        f"namespace={namespace}",
    )
    monitors = [doc for doc in rendered if doc["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert sorted(doc["kind"] for doc in monitors) == ["PodMonitor", "ServiceMonitor"]
    path = tmp_path / "monitors.yaml"
    path.write_text(yaml.safe_dump_all(monitors))
    out = kubectl(prometheus_rule_crd, "apply", "--dry-run=server", "-f", str(path)).stdout
    assert "servicemonitor.monitoring.coreos.com/poolbench-operator created (server dry run)" in out, out
    assert "podmonitor.monitoring.coreos.com/poolbench-operator created (server dry run)" in out, out
    for plural in ("servicemonitors", "podmonitors"):
        stored = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/{plural}/poolbench-operator"
        assert kube.get_or_none(stored) is None


def test_rendered_prometheus_rule_passes_a_server_side_dry_run(
    prometheus_rule_crd: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    (rule,) = render(
        "--show-only",
        "templates/prometheusrule.yaml",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        f"namespace={namespace}",
    )
    path = tmp_path / "prometheusrule.yaml"
    path.write_text(yaml.safe_dump(rule))
    out = kubectl(prometheus_rule_crd, "apply", "--dry-run=server", "-f", str(path)).stdout
    assert "prometheusrule.monitoring.coreos.com/poolbench created (server dry run)" in out
    assert kube.get_or_none(f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/prometheusrules/poolbench") is None

    # The dry run is the API server's validation: a `for` that is no duration is refused, by its path.
    bad = copy.deepcopy(rule)
    bad["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    refused = kubectl(
        prometheus_rule_crd, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad), check=False
    )
    assert refused.returncode != 0
    assert "spec.groups[0].rules[0].for" in refused.stderr, refused.stderr
