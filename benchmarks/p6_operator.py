"""P6 operator footprint: N PoolBenchmarks at once on the test control plane.

Uses the test harness (tests/harness: real etcd, kube-apiserver, controller-manager, scheduler and the
stand-in kubelet), runs the operator as `kopf run` under its ServiceAccount, applies N small
benchmarks at once, and measures the operator's RSS and CPU, the status patches per second per
resource (from a watch: each change of a resource's status is one patch), and the time from apply to
a terminal phase.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.common import Result

ROOT = Path(__file__).resolve().parent.parent
GOAL_PATCHES_PER_SECOND = 1.0


def small_benchmark(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "poolbench.dev/v1alpha1",
        "kind": "PoolBenchmark",
        "metadata": {"name": name},
        "spec": {
            "postgres": {"maxConnections": 20},
            "workload": {"threads": 2, "iterations": 20, "holdSeconds": 2, "onError": "count"},
            "steps": [1, 2],
            "stepTimeoutSeconds": 300,
            "sampling": {"intervalMs": 100},
        },
    }


class StatusWatch(threading.Thread):
    """Counts status changes per resource from a cluster-wide watch."""

    def __init__(self, kube: Any) -> None:
        super().__init__(daemon=True)
        self.kube = kube
        self.changes: dict[str, int] = {}
        self.last_status: dict[str, str] = {}
        self.created: dict[str, float] = {}
        self.terminal: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                for event in self.kube.watch("/apis/poolbench.dev/v1alpha1/poolbenchmarks", timeout_seconds=30):
                    obj = event["object"]
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    self.created.setdefault(key, time.monotonic())
                    status = yaml.safe_dump(obj.get("status") or {}, sort_keys=True)
                    if status != self.last_status.get(key) and obj.get("status"):
                        self.changes[key] = self.changes.get(key, 0) + 1
                    self.last_status[key] = status
                    phase = (obj.get("status") or {}).get("phase")
                    if phase in ("Completed", "Failed", "Invalid"):
                        self.terminal.setdefault(key, time.monotonic())
                    if self.halt.is_set():
                        return
            except Exception:  # noqa: BLE001 - a dropped watch is restarted
                time.sleep(0.5)


def run(smoke: bool = False) -> Result:
    d = measure(smoke)
    goals = [
        (
            f"{d['benchmarks']} benchmarks at once end Completed/Failed",
            f"{d['completed']} of {d['benchmarks']} (phases {', '.join(d['phases'])})",
            d["completed"] == d["benchmarks"],
        ),
        (
            f"status patches per second per resource ≤ {GOAL_PATCHES_PER_SECOND:g}",
            f"max {d['status_patches_per_second_per_resource']['max']}, median "
            f"{d['status_patches_per_second_per_resource']['median']}",
            d["goal_met"],
        ),
    ]
    md = [
        "The test control plane of tests/harness (etcd, kube-apiserver, controller-manager, scheduler built from Go;",
        "the stand-in kubelet running each pod as local processes, Postgres pods as embedded PostgreSQL), the",
        "operator as `kopf run` under its ServiceAccount, and N small benchmarks (steps [1, 2], 2 threads, 20",
        "iterations, 2 s hold) applied at once. A status patch is counted from a watch: each change of a",
        "resource's status.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| benchmarks at once | {d['benchmarks']} |",
        f"| operator RSS idle → peak | {d['operator_rss_idle_mib']} → {d['operator_rss_peak_mib']} MiB |",
        f"| operator CPU | {d['operator_cpu_seconds']} s over {d['wall_seconds']} s "
        f"({d['operator_cpu_percent_of_one_core']} % of one core) |",
        f"| apply → terminal phase (min / median / max) | {d['apply_to_done_seconds']['min']} / "
        f"{d['apply_to_done_seconds']['median']} / {d['apply_to_done_seconds']['max']} s |",
        f"| status patches per second per resource (median / max) | "
        f"{d['status_patches_per_second_per_resource']['median']} / "
        f"{d['status_patches_per_second_per_resource']['max']} |",
        "",
        "The apply-to-done time includes every pod start on the 2-core machine (all Postgres servers and replicas",
        "of all benchmarks share it), so it grows with N; the operator's own share is its CPU figure.",
    ]
    return Result("P6", "Operator footprint", goals, "\n".join(md), d)


def measure(smoke: bool = False, count: int | None = None) -> dict[str, Any]:
    from tests.harness.controlplane import ControlPlane
    from tests.harness.kube import Kube, wait_for
    from tests.harness.operator import OperatorProcess, create_namespace, kubectl
    from tests.harness.podrunner import PodRunner

    n = count or (2 if smoke else 20)
    cp = ControlPlane.from_env().start()
    assert cp.kubeconfig is not None, "start() writes the admin kubeconfig"
    runner = PodRunner(cp.kubeconfig, logs_dir=cp.logs_dir / "pods", python_path=[str(ROOT)])
    kube = Kube(cp.kubeconfig)
    op = None
    watch = StatusWatch(kube)
    try:
        runner.start()
        runner.wait_node_ready(60)
        kubectl(cp, "apply", "--server-side", "-f", str(ROOT / "manifests/crd.yaml"))
        kubectl(cp, "wait", "--for=condition=Established", "crd/poolbenchmarks.poolbench.dev", "--timeout=60s")
        kubectl(cp, "apply", "-f", str(ROOT / "manifests/rbac.yaml"))
        wait_for(
            lambda: kube.get_or_none("/api/v1/namespaces/poolbench-system/serviceaccounts/poolbench-operator"),
            30,
            what="ServiceAccount",
        )
        op = OperatorProcess(
            cp.kubeconfig_for_service_account("poolbench-system", "poolbench-operator"), cp.logs_dir / "operator.log"
        )
        op.start()
        assert op.proc is not None, "start() spawns the operator"
        watch.start()
        ns = create_namespace(kube, "p6")
        proc = psutil.Process(op.proc.pid)
        time.sleep(3)  # operator start-up, before the load
        idle_rss = proc.memory_info().rss
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.monotonic()
        docs = "---\n".join(yaml.safe_dump(small_benchmark(f"p6-{i}")) for i in range(n))
        kubectl(cp, "-n", ns, "apply", "-f", "-", input=docs)
        peak_rss = idle_rss
        keys = {f"{ns}/p6-{i}" for i in range(n)}
        deadline = time.monotonic() + (300 if smoke else 1200)
        while time.monotonic() < deadline and not keys <= set(watch.terminal):
            peak_rss = max(peak_rss, proc.memory_info().rss)
            time.sleep(0.5)
        wall = time.monotonic() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        phases = {k: yaml.safe_load(watch.last_status.get(k, "{}") or "{}").get("phase") for k in keys}
        durations = sorted(watch.terminal[k] - watch.created.get(k, t0) for k in keys if k in watch.terminal)
        rates = sorted(
            watch.changes.get(k, 0) / max(1e-6, watch.terminal.get(k, time.monotonic()) - watch.created.get(k, t0))
            for k in keys
        )
        return {
            "benchmarks": n,
            "completed": sum(1 for p in phases.values() if p in ("Completed", "Failed")),
            "phases": sorted(set(p or "none" for p in phases.values())),
            "operator_rss_idle_mib": round(idle_rss / 2**20, 1),
            "operator_rss_peak_mib": round(peak_rss / 2**20, 1),
            "operator_cpu_seconds": round(cpu, 1),
            "operator_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "wall_seconds": round(wall, 1),
            "apply_to_done_seconds": {
                "min": round(durations[0], 1) if durations else None,
                "median": round(durations[len(durations) // 2], 1) if durations else None,
                "max": round(durations[-1], 1) if durations else None,
            },
            "status_patches_per_second_per_resource": {
                "median": round(rates[len(rates) // 2], 3),
                "max": round(rates[-1], 3),
            },
            "goal_met": bool(rates) and rates[-1] <= GOAL_PATCHES_PER_SECOND,
        }
    finally:
        watch.halt.set()
        if op is not None:
            op.stop()
        runner.stop()
        kube.close()
        cp.stop()


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(smoke="--smoke" in sys.argv), indent=2))
