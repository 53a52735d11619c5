"""``PodRunner``: the Node a real control plane schedules onto, and the loops that keep it alive.

It registers the Node (Ready, untainted once the node-lifecycle controller agrees) and renews its
Lease like a kubelet; a watch on the pods bound to the Node wakes a sync loop that lists them and
starts, updates or stops one ``PodWorker`` per pod; a hosts loop keeps every pod's ``/etc/hosts``
mapping Service names to a ready endpoint pod's IP, since there is no kube-proxy or cluster DNS
(ClusterIPs are not routable here). It also gives tests what ``kubectl logs`` and a kubelet API
would: ``container_log`` and ``pod_info``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..kube import Kube, KubeError
from .network import PodNetwork, netns_list
from .postgres import prepare_pg_binaries
from .util import labels_match, now_micro, now_rfc3339, pod_ready
from .worker import PodWorker

NODE_NAME = "poolbench-node"


class PodRunner:
    """Stand-in kubelet for one Node. ``start()`` registers the Node and runs pods in background threads.

    python_path: prepended to PYTHONPATH of every non-postgres container (so ``python -m workload``
    finds the project without installing it); image_commands: entrypoints for images used without a
    ``command`` (list of (regex on the image, argv)).
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        *,
        node_name: str = NODE_NAME,
        logs_dir: Path | None = None,
        python_path: list[str] | tuple[str, ...] = (),
        image_commands: list[tuple[str, list[str]]] | None = None,
        cpu: str = "32",
        memory: str = "64Gi",
        max_pods: int = 110,
        backoff_initial: float = 1.0,
        backoff_cap: float = 10.0,
        max_grace_seconds: float = 10.0,
        honor_run_as_user: bool = True,
    ):
        self.kubeconfig = str(kubeconfig)
        self.node_name = node_name
        self.work_dir = Path(tempfile.mkdtemp(prefix="poolbench-pods-"))
        os.chmod(self.work_dir, 0o755)
        self.own_logs = logs_dir is None
        self.logs_dir = Path(logs_dir) if logs_dir else Path(tempfile.mkdtemp(prefix="poolbench-pods-logs-"))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.python_path = list(python_path)
        self.image_commands = list(image_commands or [(r"(^|/)poolbench[^/]*(:|@|$)", ["python", "-m", "workload"])])
        self.cpu, self.memory, self.max_pods = cpu, memory, max_pods
        self.backoff_initial, self.backoff_cap = backoff_initial, backoff_cap
        self.max_grace_seconds = max_grace_seconds
        self.honor_run_as_user = honor_run_as_user
        self.net = PodNetwork()
        self._kube: Kube | None = None
        self.workers: dict[str, PodWorker] = {}
        self.done_uids: set[str] = set()
        self.workers_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.log_lock = threading.Lock()
        self.node_ready_seen = False
        self.mount_points: list[Path] = []  # made on the host for secret volumes; removed by stop()
        self.mount_points_lock = threading.Lock()

    @property
    def kube(self) -> Kube:
        """The API client the runner's loops and pod workers share; set by ``start()``."""
        if self._kube is None:
            raise RuntimeError("the pod runner is not started")
        return self._kube

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> PodRunner:
        prepare_pg_binaries()
        self._kube = Kube(self.kubeconfig)
        self.net.setup()
        self._register_node()
        for target, name in (
            (self._lease_loop, "lease"),
            (self._watch_loop, "watch"),
            (self._sync_loop, "sync"),
            (self._hosts_loop, "hosts"),
        ):
            t = threading.Thread(target=target, name=f"podrunner-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        """Kills every process it started, removes every netns it created and the bridge."""
        self.stop_event.set()
        self.wake.set()
        close = getattr(self, "_close_watch", None)
        if close is not None:
            close()  # an open watch would also hold up the API server's shutdown
        for t in self.threads:  # the watch thread may sit in a read until its server-side timeout
            t.join(1 if t.name == "podrunner-watch" else 15)
        with self.workers_lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stopping = True
            w.wake.set()
        for w in workers:
            w.finished.wait(30)
        self.net.teardown()
        for point in reversed(self.mount_points):
            with contextlib.suppress(OSError):
                point.rmdir()  # only if still empty: never what someone else put there
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._kube is not None:
            self._kube.close()

    def ensure_mount_point(self, path: str) -> None:
        """An empty directory at ``path`` on the host for a bind mount (the pods' mount namespaces
        are the host's, privately): created if missing, remembered for ``stop()``."""
        with self.mount_points_lock:
            missing = []
            p = Path(path)
            while not p.exists():
                missing.append(p)
                p = p.parent
            for m in reversed(missing):
                m.mkdir(mode=0o755)
                self.mount_points.append(m)

    def remove_logs(self) -> None:
        if self.own_logs:
            shutil.rmtree(self.logs_dir, ignore_errors=True)

    def log(self, message: str) -> None:
        with self.log_lock, open(self.logs_dir / "podrunner.log", "a") as fh:
            fh.write(f"{now_micro()} {message}\n")

    # -- node -------------------------------------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        now = now_rfc3339()
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.max_pods), "ephemeral-storage": "100Gi"}

        def cond(t: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": t,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "poolbench pod runner is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond("NetworkUnavailable", "False", "RouteCreated", "pod runner bridge"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.net.gateway},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "poolbench",
                "systemUUID": "poolbench",
                "bootID": "poolbench",
                "kernelVersion": os.uname().release,
                "osImage": "poolbench pod runner",
                "containerRuntimeVersion": "podrunner://0.1",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "poolbench.dev/pod-runner": "true",
                },
            },
            "spec": {"podCIDR": self.net.cidr, "podCIDRs": [self.net.cidr]},
        }
        try:
            self.kube.create("/api/v1/nodes", node)
        except KubeError as err:
            if err.status != 409:
                raise
        self._heartbeat()

    def _heartbeat(self) -> None:
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        lease = self.kube.get_or_none(lease_path)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        if lease is None:
            node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
            self.kube.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node_name,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}
                        ],
                    },
                    "spec": spec,
                },
            )
        else:
            self.kube.patch(lease_path, {"spec": spec}, content_type="application/merge-patch+json")

    def _lease_loop(self) -> None:
        while not self.stop_event.wait(10):
            try:
                self._heartbeat()
            except Exception as err:  # noqa: BLE001
                self.log(f"heartbeat: {err!r}")

    def wait_node_ready(self, timeout: float = 60) -> dict[str, Any]:
        """Until the node is Ready and the node-lifecycle controller removed its not-ready taints."""
        deadline = time.monotonic() + timeout
        node: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
            taints = [t for t in node["spec"].get("taints") or [] if t["effect"] in ("NoSchedule", "NoExecute")]
            if not taints and any(
                c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions") or []
            ):
                return node
            time.sleep(0.25)
        raise TimeoutError(f"node {self.node_name} not schedulable after {timeout}s: {node and node['spec']}")

    # -- pods -------------------------------------------------------------------------------------
    def _pods_path_query(self) -> tuple[str, dict[str, Any]]:
        return "/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node_name}"}

    def _watch_loop(self) -> None:
        """Only wakes the sync loop; the list in ``_sync`` is the source of truth."""
        kube = Kube(self.kubeconfig)
        path, query = self._pods_path_query()
        try:
            while not self.stop_event.is_set():
                try:
                    for _event in kube.watch(
                        path, query, timeout_seconds=30, on_open=lambda close: setattr(self, "_close_watch", close)
                    ):
                        self.wake.set()
                        if self.stop_event.is_set():
                            break
                except Exception:  # noqa: BLE001 - reconnect
                    if self.stop_event.wait(1):
                        break
        finally:
            kube.close()

    def _sync_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._sync()
            except Exception as err:  # noqa: BLE001
                self.log(f"sync: {err!r}")
            self.wake.wait(1.0)
            self.wake.clear()

    def _sync(self) -> None:
        path, query = self._pods_path_query()
        pods = {p["metadata"]["uid"]: p for p in self.kube.items(path, **query)}
        with self.workers_lock:
            for uid, w in list(self.workers.items()):
                if w.finished.is_set():
                    del self.workers[uid]
                    self.done_uids.add(uid)
                elif uid not in pods:
                    w.vanished = True
                    w.wake.set()
            for uid, pod in pods.items():
                existing = self.workers.get(uid)
                if existing is not None:
                    existing.update(pod)
                    continue
                if pod["metadata"].get("deletionTimestamp"):
                    self._force_delete(pod)  # nothing of ours runs for it (any more)
                    continue
                if uid in self.done_uids or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                if self.stop_event.is_set():
                    return
                w = PodWorker(self, pod)
                self.workers[uid] = w
                w.start()

    def _force_delete(self, pod: dict[str, Any]) -> None:
        with contextlib.suppress(KubeError):
            self.kube.delete(
                f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}},
                query={"gracePeriodSeconds": 0},
            )

    # -- names ------------------------------------------------------------------------------------
    def _hosts_loop(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.refresh_hosts()
            except Exception as err:  # noqa: BLE001
                self.log(f"hosts: {err!r}")

    def refresh_hosts(self) -> None:
        with self.workers_lock:
            workers = [w for w in self.workers.values() if w.sandbox_ready and not w.finished.is_set()]
        if not workers:
            return
        self.fetch_cluster()
        for w in workers:
            w.refresh_hosts(self.hosts_for(w))

    def fetch_cluster(self) -> None:
        self._cluster = (self.kube.items("/api/v1/services"), self.kube.items("/api/v1/pods"))

    def hosts_for(self, worker: PodWorker) -> str:
        """/etc/hosts for one pod: itself, Services (→ a ready endpoint pod's IP), StatefulSet pod names."""
        services, pods = getattr(self, "_cluster", ([], []))
        ns = worker.namespace
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hostname = worker.pod["spec"].get("hostname") or worker.pod_name
        if worker.ip:
            names = [hostname]
            sub = worker.pod["spec"].get("subdomain")
            if sub:
                names.insert(0, f"{hostname}.{sub}.{ns}.svc.cluster.local")
            lines.append(f"{worker.ip}\t{' '.join(names)}")
        by_ns: dict[str, list[dict[str, Any]]] = {}
        for p in pods:
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp"):
                by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
        for svc in services:
            sns, sname = svc["metadata"]["namespace"], svc["metadata"]["name"]
            selector = svc["spec"].get("selector")
            if not selector:
                continue
            any_ready = bool(svc["spec"].get("publishNotReadyAddresses"))
            endpoints = sorted(
                (
                    p
                    for p in by_ns.get(sns, [])
                    if labels_match(selector, p["metadata"].get("labels") or {}) and (any_ready or pod_ready(p))
                ),
                key=lambda p: p["metadata"]["name"],
            )
            if endpoints:
                names = [f"{sname}.{sns}.svc.cluster.local", f"{sname}.{sns}.svc", f"{sname}.{sns}"]
                if sns == ns:
                    names.append(sname)
                lines.append(f"{endpoints[0]['status']['podIP']}\t{' '.join(names)}")
            for p in endpoints:  # StatefulSet-style per-pod names: <hostname>.<service>
                if p["spec"].get("subdomain") == sname and p["spec"].get("hostname"):
                    h = p["spec"]["hostname"]
                    names = [f"{h}.{sname}.{sns}.svc.cluster.local", f"{h}.{sname}.{sns}.svc", f"{h}.{sname}.{sns}"]
                    if sns == ns:
                        names.append(f"{h}.{sname}")
                    lines.append(f"{p['status']['podIP']}\t{' '.join(names)}")
        return "\n".join(lines) + "\n"

    # -- introspection for tests --------------------------------------------------------------------
    def image_command(self, image: str) -> list[str] | None:
        for pattern, argv in self.image_commands:
            if re.search(pattern, image):
                return list(argv)
        return None

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        with self.workers_lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.pod_name == name and not w.finished.is_set():
                    return w
        return None

    def pod_info(self, namespace: str, name: str) -> dict[str, Any] | None:
        """{uid, netns, ip, pids{container: pid}, dir, logs} of a pod this runner is running."""
        w = self.worker(namespace, name)
        return w.info() if w else None

    def container_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """The container's stdout/stderr (all restarts), like ``kubectl logs``; '' when unknown."""
        for d in sorted(self.logs_dir.glob(f"{namespace}_{name}_*")):
            files = [d / f"{container}.log"] if container else sorted(d.glob("*.log"))
            return "".join(f.read_text(errors="replace") for f in files if f.exists())
        return ""

    def netns_names(self) -> list[str]:
        return [n for n in netns_list() if self.net.index is not None and n.startswith(self.net.prefix)]
