"""The node's teardown leaves nothing behind (these tests use ``node_teardown``, so they run last).

After ``Cluster.stop()``: no containerd, kubelet, kube-proxy, CoreDNS or shim process, no firewall rule
or chain, bridge, mount, network namespace or kubepods cgroup that was not there before the node
started, and the sysctls the kubelet rewrites are back.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.cluster import BRIDGE, STATE_FILE, Cluster, HostSnapshot
from tests.harness.controlplane import ROOT

pytestmark = pytest.mark.node


def test_teardown_leaves_nothing(node_teardown: Any) -> None:
    # The fixture ran a pod (the earlier tests' pods may be gone) and stopped the node.
    during = node_teardown.during
    assert any("kubelet" in p for p in during.processes)
    assert any("shim" in p for p in during.processes)
    assert BRIDGE in during.links
    assert during.firewall - node_teardown.before.firewall
    assert node_teardown.problems == [], node_teardown.problems
    after = node_teardown.after
    assert node_teardown.before.leftovers(after) == []
    assert not any(
        name in p
        for p in after.processes - node_teardown.before.processes
        for name in ("containerd", "kubelet", "kube-proxy", "coredns", "shim")
    )


OWNER = """
import sys, time
from tests.harness.cluster import Cluster
from tests.harness.kube import Kube, wait_for
cluster = Cluster.from_env().start()
kube = Kube(cluster.kubeconfig)
kube.create("/api/v1/namespaces/default/pods", {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan"},
    "spec": {"containers": [{"name": "c", "image": "localhost/pause:3.10", "imagePullPolicy": "Never"}]}})
wait_for(lambda: kube.get("/api/v1/namespaces/default/pods/orphan")["status"].get("phase") == "Running", 120)
print("up", flush=True)
time.sleep(600)
"""


def test_a_node_whose_owner_was_killed_is_reclaimed_by_the_next_start(node_teardown: Any) -> None:
    """SIGKILL the process that owns a node (a CI run killed at its time limit): the next start tears
    the orphan down from what it recorded, and the machine ends as it was before the orphan started."""
    import json
    import shutil
    import signal
    import subprocess
    import sys

    assert node_teardown.cluster.stopped  # the session's node is down
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "up"
        state = json.loads(STATE_FILE.read_text())
        original = HostSnapshot.from_json(state["before"])
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
    # The reclaim keeps the orphan's logs for whoever debugs a killed run; this orphan was ours.
    shutil.rmtree(state["work_dir"], ignore_errors=True)
