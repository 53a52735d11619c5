"""P7 time to verdict on a real node: the `small` example under a real kubelet ÷ the local run of the same spec.

The node is the node tier's (tests/harness/cluster.py: containerd, kubelet, kube-proxy, CoreDNS, the
project's images built by hack/build-images.sh), the operator installed with the Helm chart. The local
run is `poolbench run` of the same file on embedded PostgreSQL, in the same run on the same machine.
Where the node's time goes comes from the API's own timestamps (pod conditions, container start
times, the benchmark's step times), whole seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Result

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "manifests/examples/small.yaml"


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _condition(pod: dict[str, Any], kind: str) -> float | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == kind and c["status"] == "True":
            return _ts(c.get("lastTransitionTime"))
    return None


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
    try:
        t1 = time.monotonic()
        installed = helm_install(cluster)
        if installed.returncode != 0:
            raise RuntimeError(f"helm install failed: {installed.stderr[-2000:]}")
        helm_seconds = time.monotonic() - t1
        ns = create_restricted_namespace(kube, "p7")
        doc = yaml.safe_load(EXAMPLE.read_text())
        doc["spec"]["postgres"]["image"] = POSTGRES_IMAGE
        applied = time.time()
        t2 = time.monotonic()
        kubectl(cluster, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(doc))
        path = f"/apis/poolbench.dev/v1alpha1/namespaces/{ns}/poolbenchmarks/small"

        def finished() -> dict[str, Any] | None:
            obj = kube.get(path)
            return obj if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Invalid") else None

        obj = wait_for(finished, 600, interval=0.5, what="the small example's verdict")
        to_verdict = time.monotonic() - t2
        status = obj["status"]
        pg = kube.get(f"/api/v1/namespaces/{ns}/pods/small-postgres-0")
        scheduled = _condition(pg, "PodScheduled")
        started = _ts(pg["status"]["containerStatuses"][0]["state"].get("running", {}).get("startedAt"))
        ready = _condition(pg, "Ready")
        steps = [
            (s["replicas"], _ts(s.get("startedAt")), _ts(s.get("finishedAt"))) for s in status["variants"][0]["steps"]
        ]
        first_step = steps[0][1] or applied
        phases = {
            "apply → Postgres pod scheduled (operator: children created)": (scheduled or applied) - applied,
            "pod start (sandbox, network, image unpack, container)": (started or 0) - (scheduled or 0),
            "Postgres init (initdb, server start, readiness probe)": (ready or 0) - (started or 0),
            "Postgres ready → step 1 starts (monitor connects, app role)": first_step - (ready or first_step),
        }
        for i, (replicas, begin, end) in enumerate(steps):
            if i:
                phases[f"between steps {i} and {i + 1}"] = (begin or 0) - (steps[i - 1][2] or 0)
            label = f"step {i + 1}: {replicas} replicas (scale, pods start, work, hold, drain)"
            phases[label] = (end or 0) - (begin or 0)
        last_end = steps[-1][2] or time.time()
        phases["last step → verdict written"] = max(0.0, applied + to_verdict - last_end)
        return {
            "node_up_seconds": round(node_up, 1),
            "node_timings": cluster.timings,
            "helm_install_seconds": round(helm_seconds, 1),
            "to_verdict_seconds": round(to_verdict, 1),
            "verdict": status.get("verdict", {}).get("summary") or status.get("message", ""),
            "phases": {k: round(v, 1) for k, v in phases.items()},
        }
    finally:
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
            "node apply → verdict ÷ local `poolbench run` of the same spec (information)",
            f"{ratio:.2f} ({node['to_verdict_seconds']} s ÷ {local_wall:.1f} s)",
            None,
        ),
    ]
    md = [
        "`manifests/examples/small.yaml` (steps 2 and 8, 6 threads × 20 × `SELECT pg_sleep(0.05)`, 3 s hold)",
        "two ways in the same run: `poolbench run` (embedded PostgreSQL, local processes) and `kubectl apply`",
        "on the node tier's real node (containerd, kubelet, kube-proxy, CoreDNS; the operator installed with",
        "the chart; the Postgres image the local Debian stand-in). The node figure is apply → terminal phase.",
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
        "Where the node's apply → verdict time goes (API timestamps, whole seconds):",
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in node["phases"].items()],
        f"| **total** | {sum(node['phases'].values()):.1f} (measured {node['to_verdict_seconds']}) |",
    ]
    data = {"local_seconds": round(local_wall, 2), "ratio": round(ratio, 2), **node}
    return Result("P7", "Time to verdict on a real node", goals, "\n".join(md), data)


if __name__ == "__main__":
    import json

    print(json.dumps(run().data, indent=2))
