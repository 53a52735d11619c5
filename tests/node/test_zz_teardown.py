"""Runs last in the node tier (file order): the node's teardown leaves nothing behind.

After ``Cluster.stop()``: no containerd, kubelet, kube-proxy, CoreDNS or shim process, no firewall rule
or chain, bridge, mount, network namespace or kubepods cgroup that was not there before the node
started, and the sysctls the kubelet rewrites are back.
"""

from __future__ import annotations

import pytest

from .cluster import BRIDGE, HostSnapshot
from .conftest import keep_logs, save_operator_log

pytestmark = pytest.mark.node


def test_teardown_leaves_nothing(cluster, kube):
    # Something to tear down: the earlier tests' pods may be gone, so run one now.
    kube.create("/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "last"},
        "spec": {"containers": [{"name": "c", "image": "localhost/pause:3.10", "imagePullPolicy": "Never"}]}})
    from tests.k8s.kube import wait_for
    wait_for(lambda: kube.get("/api/v1/namespaces/default/pods/last")["status"].get("phase") == "Running", 120,
             what="a pod to tear down")
    during = HostSnapshot.take()
    assert any("kubelet" in p for p in during.processes) and any("shim" in p for p in during.processes)
    assert BRIDGE in during.links and during.firewall - cluster.before.firewall
    save_operator_log(cluster)
    problems = cluster.stop(keep_logs=keep_logs())
    assert problems == [], problems
    after = HostSnapshot.take()
    assert cluster.before.leftovers(after) == []
    assert not any(name in p for p in after.processes - cluster.before.processes
                   for name in ("containerd", "kubelet", "kube-proxy", "coredns", "shim"))
