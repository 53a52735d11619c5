"""Runs last in the node tier (file order): the node's teardown leaves nothing behind.

After ``Cluster.stop()``: no containerd, kubelet, kube-proxy, CoreDNS or shim process, no firewall rule
or chain, bridge, mount, network namespace or kubepods cgroup that was not there before the node
started, and the sysctls the kubelet rewrites are back.
"""

from __future__ import annotations

from typing import Any

import pytest

from .cluster import BRIDGE, HostSnapshot
from .conftest import keep_logs, save_operator_log

pytestmark = pytest.mark.node


def test_teardown_leaves_nothing(cluster: Any, kube: Any) -> None:
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


OWNER = """
import sys, time
from tests.k8s.kube import Kube, wait_for
from tests.node.cluster import Cluster
cluster = Cluster.from_env().start()
kube = Kube(cluster.kubeconfig)
kube.create("/api/v1/namespaces/default/pods", {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan"},
    "spec": {"containers": [{"name": "c", "image": "localhost/pause:3.10", "imagePullPolicy": "Never"}]}})
wait_for(lambda: kube.get("/api/v1/namespaces/default/pods/orphan")["status"].get("phase") == "Running", 120)
print("up", flush=True)
time.sleep(600)
"""


def test_a_node_whose_owner_was_killed_is_reclaimed_by_the_next_start(cluster: Any) -> None:
    """SIGKILL the process that owns a node (a CI run killed at its time limit): the next start tears
    the orphan down from what it recorded, and the machine ends as it was before the orphan started."""
    import json
    import signal
    import subprocess
    import sys

    from tests.k8s.controlplane import ROOT

    from .cluster import STATE_FILE, Cluster

    assert cluster.stopped  # the session's node is down (the test above)
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        original = HostSnapshot.from_json(json.loads(STATE_FILE.read_text())["before"])
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        assert any("shim" in p for p in HostSnapshot.take().processes)  # the orphan's pod outlived it
        successor = Cluster.from_env().start()  # reclaims, then starts
        assert successor.stop() == []
        assert original.leftovers(HostSnapshot.take()) == []
        assert not STATE_FILE.exists()
    finally:
        if owner.poll() is None:
            owner.kill()
