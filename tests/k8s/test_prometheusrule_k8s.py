"""The chart's PrometheusRule against a real API server with the Prometheus Operator's CRD installed
(fetched by hack/fetch-prometheus-operator-crds.sh at the pinned version): a server-side dry run accepts
it as rendered, stores nothing, and the same dry run refuses a rule the CRD's schema does not allow."""

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

CRD_NAME = "prometheusrules.monitoring.coreos.com"


@pytest.fixture(scope="module")
def prometheus_rule_crd(control_plane: ControlPlane, kube: Kube) -> ControlPlane:
    crds = ensure("POOLBENCH_PROMETHEUS_CRDS")
    install_crd(control_plane, kube, crds / "monitoring.coreos.com_prometheusrules.yaml", CRD_NAME)
    return control_plane


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
