"""P7 time to verdict on a real node: the `small` example under a real kubelet ÷ the local run of the same spec.

The node is the node tier's (tests/harness/cluster.py: containerd, kubelet, kube-proxy, CoreDNS, the
project's images built by hack/build-images.sh), the operator installed with the Helm chart. The local
run is `poolbench run` of the same file on embedded PostgreSQL, in the same run on the same machine.
Where the node's time goes comes from the benchmark's own watches of the namespace (the resource's
status, the pods): the moment each step start, step end, pod start, pod deletion and the verdict
first reached a watcher, so the phases add up to the measured apply → verdict time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Result

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "manifests/examples/small.yaml"
RATIO_GOAL = 1.6  # node apply → verdict ÷ local run of the same spec


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class Timeline:
    """When the API server told its watchers what happened in the benchmark's namespace: each mark is
    the local time (epoch seconds) at which a watch event first showed it. Status timestamps are whole
    seconds; these marks are what a user watching the resource sees, to a few milliseconds."""

    def __init__(self, kubeconfig: str, namespace: str, name: str):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.name = name
        self.marks: dict[str, float] = {}
        self.pods: dict[str, dict[str, float]] = {}  # workload pod → its own marks
        #: per step, from its pods told to stop: every container ended, and the last pod object gone
        self.teardown: dict[str, tuple[float | None, float | None]] = {}
        self.closers: list[Any] = []
        self.opened: list[threading.Event] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        base = f"/api/v1/namespaces/{self.namespace}/pods"
        resource = f"/apis/poolbench.dev/v1alpha1/namespaces/{self.namespace}/poolbenchmarks"
        for path, handle in ((base, self.on_pod), (resource, self.on_benchmark)):
            opened = threading.Event()
            thread = threading.Thread(target=self.follow, args=(path, handle, opened), daemon=True)
            thread.start()
            self.opened.append(opened)
            self.threads.append(thread)
        for opened in self.opened:
            if not opened.wait(30):
                raise RuntimeError("a watch of the benchmark's namespace did not open")

    def stop(self) -> None:
        for close in self.closers:
            close()
        for thread in self.threads:
            thread.join(5)

    def follow(self, path: str, handle: Any, opened: threading.Event) -> None:
        from tests.harness.kube import Kube

        kube = Kube(self.kubeconfig)

        def on_open(close: Any) -> None:
            self.closers.append(close)
            opened.set()

        try:
            for event in kube.watch(path, timeout_seconds=900, on_open=on_open):
                handle(event["type"], event["object"], time.time())
        except Exception:  # noqa: BLE001 - closed from stop(): the marks so far are the result
            pass
        finally:
            kube.close()

    def mark(self, key: str, at: float) -> None:
        with self.lock:
            self.marks.setdefault(key, at)

    def on_benchmark(self, _kind: str, obj: dict[str, Any], at: float) -> None:
        if obj["metadata"]["name"] != self.name:
            return
        status = obj.get("status") or {}
        for v in status.get("variants") or []:
            for i, step in enumerate(v.get("steps") or []):
                if step.get("startedAt"):
                    self.mark(f"step {i} started", at)
                if step.get("outcome"):
                    self.mark(f"step {i} finished", at)
        if status.get("phase") in ("Completed", "Failed", "Invalid", "BoundaryFound"):
            self.mark("verdict", at)

    def on_pod(self, kind: str, pod: dict[str, Any], at: float) -> None:
        meta = pod["metadata"]
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component")
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        running = bool(statuses) and all("running" in (c.get("state") or {}) for c in statuses)
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or []
        )
        if component == "postgres":
            self.mark("postgres created", at)
            if running:
                self.mark("postgres running", at)
            if ready:
                self.mark("postgres ready", at)
            return
        if component != "workload":
            return
        with self.lock:
            marks = self.pods.setdefault(meta["name"], {})
            marks.setdefault("created", at)
            if running:
                marks.setdefault("running", at)
            if meta.get("deletionTimestamp"):
                marks.setdefault("deleting", at)
                if statuses and all("terminated" in (c.get("state") or {}) for c in statuses):
                    marks.setdefault("stopped", at)
            if kind == "DELETED":
                marks.setdefault("gone", at)

    def step_pods(self, begin: float, end: float | None) -> list[dict[str, float]]:
        """The workload pods created while the step ran (its own, never the previous step's)."""
        return [m for m in self.pods.values() if begin <= m["created"] and (end is None or m["created"] < end)]

    def phases(self, applied: float, replicas: list[int]) -> dict[str, float | None]:
        """Apply → verdict, cut where the time goes; indented rows (↳) split the row above them."""
        m = self.marks

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        started = [m.get(f"step {i} started") for i in range(len(replicas))]
        finished = [m.get(f"step {i} finished") for i in range(len(replicas))]
        out: dict[str, float | None] = {
            "provisioning: apply → step 1 started": span(applied, started[0]),
            "↳ apply → Postgres pod created (operator: daemon, children)": span(applied, m.get("postgres created")),
            "↳ pod created → container running (sandbox, network, container start)": span(
                m.get("postgres created"), m.get("postgres running")
            ),
            "↳ running → Ready (initdb, server start, readiness probe)": span(
                m.get("postgres running"), m.get("postgres ready")
            ),
            "↳ Ready → step 1 started (reachable, monitor, status patch)": span(m.get("postgres ready"), started[0]),
        }

        def wind_down(i: int, until: float | None, what: str) -> None:
            begin = started[i]
            end = started[i + 1] if i + 1 < len(started) else None
            pods = self.step_pods(begin, end) if begin is not None else []
            deleting = min((p["deleting"] for p in pods if "deleting" in p), default=None)
            ends = [min(p[k] for k in ("stopped", "gone") if k in p) for p in pods if "stopped" in p or "gone" in p]
            ended = max(ends) if pods and len(ends) == len(pods) else None
            gone = max((p["gone"] for p in pods if "gone" in p), default=None)
            out[f"↳ step {i + 1} finished → its pods told to stop (scale to 0)"] = span(finished[i], deleting)
            out[f"↳ step {i + 1}'s pods told to stop → {what}"] = span(deleting, until)
            self.teardown[f"step {i + 1}"] = (span(deleting, ended), span(deleting, gone))

        for i, count in enumerate(replicas):
            if i:
                out[f"between steps {i} and {i + 1}"] = span(finished[i - 1], started[i])
                wind_down(
                    i - 1, started[i], f"step {i + 1} started (replicas done or ended, drain verified, status patch)"
                )
            begin, end = started[i], started[i + 1] if i + 1 < len(started) else None
            pods = self.step_pods(begin, end) if begin is not None else []
            up = max((p["running"] for p in pods if "running" in p), default=None) if len(pods) >= count else None
            out[f"step {i + 1}: {count} replicas (started → finished)"] = span(begin, finished[i])
            out[f"↳ step {i + 1} started → {count} pods running (scale, pod start)"] = span(begin, up)
            out[f"↳ {count} pods running → step {i + 1} finished (work, hold, reports)"] = span(up, finished[i])
        out["last step → verdict written"] = span(finished[-1], m.get("verdict"))
        wind_down(
            len(replicas) - 1,
            m.get("verdict"),
            "verdict written (replicas done or ended, drain verified, status patch)",
        )
        return out


def local_run() -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(EXAMPLE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - t0
    verdict = next((line.strip() for line in proc.stdout.splitlines() if "replicas ran safely" in line), "")
    return wall, verdict


def node_run() -> dict[str, Any]:
    from tests.harness.cluster import Cluster
    from tests.harness.kube import Kube, wait_for
    from tests.harness.operator import kubectl
    from tests.harness.release import POSTGRES_IMAGE, create_restricted_namespace, helm_install

    cluster = Cluster.from_env()
    t0 = time.monotonic()
    cluster.start()
    node_up = time.monotonic() - t0
    kube = Kube(cluster.kubeconfig)
    timeline: Timeline | None = None
    try:
        t1 = time.monotonic()
        installed = helm_install(cluster)
        if installed.returncode != 0:
            raise RuntimeError(f"helm install failed: {installed.stderr[-2000:]}")
        helm_seconds = time.monotonic() - t1
        ns = create_restricted_namespace(kube, "p7")
        doc = yaml.safe_load(EXAMPLE.read_text())
        doc["spec"]["postgres"]["image"] = POSTGRES_IMAGE
        timeline = Timeline(str(cluster.kubeconfig), ns, doc["metadata"]["name"])
        timeline.start()
        applied = time.time()
        kubectl(cluster, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(doc))
        path = f"/apis/poolbench.dev/v1alpha1/namespaces/{ns}/poolbenchmarks/small"

        def finished() -> dict[str, Any] | None:
            obj = kube.get(path)
            return (
                obj
                if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Invalid", "BoundaryFound")
                else None
            )

        obj = wait_for(finished, 600, interval=0.1, what="the small example's verdict")
        polled = time.time()
        until = time.monotonic() + 15  # the last step's teardown, for the comparison below the table
        while time.monotonic() < until and not all("gone" in p for p in list(timeline.pods.values())):
            time.sleep(0.2)
        timeline.stop()
        verdict_at = timeline.marks.get("verdict", polled)
        to_verdict = verdict_at - applied
        status = obj["status"]
        replicas = [s["replicas"] for s in status["variants"][0]["steps"]]
        phases = timeline.phases(applied, replicas)
        operator_log = kubectl(
            cluster, "-n", "poolbench-system", "logs", "deploy/poolbench-operator", "--tail=400", check=False
        ).stdout
        return {
            "node_up_seconds": round(node_up, 1),
            "node_timings": cluster.timings,
            "helm_install_seconds": round(helm_seconds, 1),
            "to_verdict_seconds": round(to_verdict, 2),
            "verdict": status.get("verdict", {}).get("summary") or status.get("message", ""),
            "phases": {k: None if v is None else round(v, 2) for k, v in phases.items()},
            "marks": {k: round(v - applied, 3) for k, v in sorted(timeline.marks.items(), key=lambda kv: kv[1])},
            "pods": {
                name: {k: round(v - applied, 3) for k, v in marks.items()} for name, marks in timeline.pods.items()
            },
            "teardown_after_told_to_stop": {
                k: [None if v is None else round(v, 2) for v in pair] for k, pair in timeline.teardown.items()
            },
            "status": status,
            "operator_log": operator_log.splitlines()[-120:],
        }
    finally:
        if timeline is not None:
            timeline.stop()
        kube.close()
        problems = cluster.stop()
        if problems:
            raise RuntimeError(f"the node's teardown left: {problems}")


def run(smoke: bool = False) -> Result:
    local_wall, local_verdict = local_run()
    node = node_run()
    ratio = node["to_verdict_seconds"] / local_wall
    goals: list[tuple[str, str, bool | None]] = [
        (
            "the node run reaches the local run's verdict",
            f"node: {node['verdict'][:80]}; local: {local_verdict[:80]}",
            bool(node["verdict"])
            and "2 replicas ran safely" in node["verdict"]
            and "2 replicas ran safely" in local_verdict,
        ),
        (
            f"node apply → verdict ÷ local `poolbench run` of the same spec ≤ {RATIO_GOAL}",
            f"{ratio:.2f} ({node['to_verdict_seconds']} s ÷ {local_wall:.1f} s)",
            ratio <= RATIO_GOAL,
        ),
    ]
    md = [
        "`manifests/examples/small.yaml` (steps 2 and 8, 6 threads × 20 × `SELECT pg_sleep(0.05)`, 3 s hold)",
        "two ways in the same run: `poolbench run` (embedded PostgreSQL, local processes) and `kubectl apply`",
        "on the node tier's real node (containerd, kubelet, kube-proxy, CoreDNS; the operator installed with",
        "the chart; the Postgres image the local Debian stand-in). The node figure is apply → the terminal phase",
        "as a watch of the resource first shows it.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| local: `poolbench run` wall time | {local_wall:.1f} s |",
        f"| node: apply → verdict | {node['to_verdict_seconds']} s |",
        f"| **node ÷ local** | **{ratio:.2f}** |",
        f"| node up (control plane, containerd, image import, kubelet Ready) | {node['node_up_seconds']} s "
        f"({', '.join(f'{k} {v} s' for k, v in node['node_timings'].items())}) |",
        f"| `helm install --wait` (operator pod Running) | {node['helm_install_seconds']} s |",
        "",
        "Where the node's apply → verdict time goes: when the benchmark's own watches of the namespace first",
        "showed each thing (the resource's status, the pods); rows marked ↳ split the row above them:",
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {k} | {'n/a' if v is None else f'{v:.2f}'} |" for k, v in node["phases"].items()],
        f"| **total** | {sum(v or 0 for k, v in node['phases'].items() if not k.startswith('↳')):.2f}"
        f" (measured {node['to_verdict_seconds']:.2f}) |",
        "",
        "The kubelet's teardown of a step's pods, for comparison (the next step does not wait for it once every",
        "replica said it is done and the server shows no client backend): from told to stop, every container",
        "ended / the last pod object gone after "
        + "; ".join(
            f"{' / '.join('n/a' if v is None else f'{v:.2f} s' for v in pair)} ({k})"
            for k, pair in node["teardown_after_told_to_stop"].items()
        )
        + ".",
    ]
    data = {"local_seconds": round(local_wall, 2), "ratio": round(ratio, 2), **node}
    return Result("P7", "Time to verdict on a real node", goals, "\n".join(md), data)


if __name__ == "__main__":
    import json

    print(json.dumps(run().data, indent=2))
