"""The operator's /metrics scraped by a real Prometheus (Debian's ``prometheus``, started here with a
static scrape of the operator pod's IP and port ``metrics``) while the small seed runs on a real node;
what Prometheus's HTTP API answers is what the benchmark's status shows."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poolbench.core.benchmark import full_status
from poolbench.core.contracts import operator_metrics as m
from poolbench.core.monitoring import RATE_INTERVAL, dashboard, panel_queries
from tests.harness.controlplane import free_port
from tests.harness.kube import wait_for
from tests.harness.operator import kubectl
from tests.harness.opmetrics import Samples, expected, of_benchmark, scrape
from tests.harness.release import create_restricted_namespace, operator_pod, record
from tests.k8s.test_operator_e2e import small_seed, wait_phase
from tests.node.test_node_e2e import apply

pytestmark = pytest.mark.node

NAME = "metrics"
SCRAPE_INTERVAL = "1s"


class Prometheus:
    """A real Prometheus on 127.0.0.1, scraping ``target`` (honor_labels, as the chart's monitors)."""

    def __init__(self, target: str, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {
                    "job_name": "poolbench-operator",
                    "honor_labels": True,
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.url}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read()) if path.startswith("/api/") else response.read().decode()

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def query_range(self, promql: str, start: float, end: float, step: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query_range", query=promql, start=str(start), end=str(end), step=step)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def samples(self, promql: str) -> list[tuple[str, dict[str, str], float]]:
        """(metric name, labels without job and instance, value) of each series the query answers."""
        out = []
        for series in self.query(promql):
            labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "job", "instance")}
            out.append((series["metric"].get("__name__", ""), labels, float(series["value"][1])))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def prometheus(cluster: Any, kube: Any, helm_release: Any) -> Iterator[Prometheus]:
    if not shutil.which("prometheus"):
        pytest.fail("the node tier needs Prometheus (Debian: apt-get install prometheus)", pytrace=False)
    pod = operator_pod(kube)
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    target = f"{pod['status']['podIP']}:{ports['metrics']}"
    # The host reaches the pod over the node's bridge: a scrape from here is Prometheus's path too. The
    # pod is Running before kopf's start-up handler has started the server: a refusal is retried.
    try:
        wait_for(lambda: scrape(f"http://{target}/metrics"), 90, interval=0.5, what=f"/metrics at {target}")
    except TimeoutError as err:
        log = kubectl(cluster, "-n", "poolbench-system", "logs", "deploy/poolbench-operator", "--tail=40", check=False)
        pytest.fail(f"the operator pod's /metrics is not reachable from this machine: {err}\n{log.stdout}{log.stderr}")
    with tempfile.TemporaryDirectory(prefix="poolbench-prometheus-") as tmp:
        server = Prometheus(target, Path(tmp))
        try:
            wait_for(lambda: server.get("/-/ready"), 60, interval=0.5, what="Prometheus ready")
            wait_for(
                lambda: server.query('up{job="poolbench-operator"} == 1'), 60, interval=0.5, what="the first scrape"
            )
            yield server
        finally:
            server.stop()
            print("\n--- prometheus log (tail) ---\n" + "\n".join(server.log.read_text().splitlines()[-30:]))


def test_prometheus_scrapes_what_status_shows(cluster: Any, kube: Any, prometheus: Prometheus) -> None:
    ns = create_restricted_namespace(kube, "prom")
    started = time.time()
    apply(cluster, ns, small_seed(NAME))
    selector = f'namespace="{ns}",benchmark="{NAME}"'
    # While it runs, Prometheus has the running step's backends (the honored namespace label is the
    # benchmark's, not the operator pod's).
    wait_for(
        lambda: prometheus.query(f"sum(poolbench_benchmark_backends{{{selector}}}) > 0"),
        420,
        interval=1.0,
        what="a scrape with the running step's backends",
    )
    status = full_status(wait_phase(kube, ns, NAME, timeout=420)["status"])
    assert status["phase"] == "Failed", status.get("message")
    final = f'poolbench_benchmark_phase{{{selector},phase="{status["phase"]}"}} == 1'
    wait_for(lambda: prometheus.query(final), 30, interval=0.5, what="a scrape after the verdict")

    got: Samples = of_benchmark(prometheus.samples(f'{{__name__=~"poolbench_benchmark_.+",{selector}}}'), ns, NAME)
    want = expected(status)
    assert {k: got.get(k) for k in want} == want
    steps = status["variants"][0]["steps"]
    step_peak = max(s["peakConnections"] for s in steps)
    most_peak = value(prometheus.query(f"max_over_time(poolbench_benchmark_peak_backends{{{selector}}}[15m])"))
    most_backends = value(prometheus.query(f"max_over_time(sum(poolbench_benchmark_backends{{{selector}}})[15m:1s])"))
    failures = value(prometheus.query(f"sum(poolbench_benchmark_failures_total{{{selector}}})"))
    assert most_peak == step_peak
    assert 0 < most_backends <= step_peak
    assert failures == status["failures"]
    rows = [
        (
            "peak_backends (last step)",
            got[(m.PEAK_BACKENDS, ())],
            f"last step's peakConnections {steps[-1]['peakConnections']}",
        ),
        ("max_over_time(peak_backends)", most_peak, f"largest step peakConnections {step_peak}"),
        ("sum(failures_total)", failures, f"status.failures {status['failures']}"),
        ("ghost_backends (last step)", got[(m.GHOST_BACKENDS, ())], f"last step's idleAtEnd {steps[-1]['idleAtEnd']}"),
        ("max_over_time(sum(backends))", most_backends, "live, while running"),
    ]
    record(
        cluster,
        "Prometheus (real, scraping the operator pod) against status",
        "\n".join(f"{query:<32} {served:>6g}   {said}" for query, served, said in rows),
    )
    # Every panel of the chart's dashboard shows data for this run, its variables set as a user picks them.
    answered = []
    for query in panel_queries(dashboard()):
        promql = dashboard_query(query, ns, NAME)
        points = [
            float(v)
            for series in prometheus.query_range(promql, started, time.time(), "2s")
            for _, v in series["values"]
            if v != "NaN"
        ]
        assert points, f"no data for the panel query {promql}"
        answered.append(f"{len(points):>5} points  {query[:90]}")
    record(cluster, "Every dashboard panel's query over the run (real Prometheus)", "\n".join(answered))
    kube.delete(f"/api/v1/namespaces/{ns}")


def dashboard_query(query: str, namespace: str, benchmark: str) -> str:
    """A panel's query as Grafana sends it: its variables replaced (every variant) and the rate window
    Grafana would pick for a 1 s scrape interval."""
    picked = {m.NAMESPACE_LABEL: namespace, m.BENCHMARK_LABEL: benchmark, m.VARIANT_LABEL: ".*"}
    for label, value in picked.items():
        query = query.replace(f"${label}", value)
    return query.replace(RATE_INTERVAL, "1m")


def value(result: list[dict[str, Any]]) -> float:
    """The one sample of an instant query's answer."""
    assert len(result) == 1, result
    return float(result[0]["value"][1])
