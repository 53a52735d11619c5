"""``kubectl poolbench`` against a real API server: PoolBenchmarks created with the CRD installed and their
status written through the status subresource, as the operator writes it (no operator runs here).

Three benchmarks: one finished (3 steps passed), one failed (6 replicas refused, 7 times "too many
clients"), one comparing a direct and a pooled variant; in two namespaces. The plugin runs as kubectl runs
it: the ``kubectl-poolbench`` program with the words typed after ``kubectl poolbench``, and through the real
``kubectl`` with the plugin on PATH.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench.core.results import (
    RESULTS_KEY,
    BenchmarkStatus,
    ErrorCounts,
    Outcome,
    Phase,
    PoolerStepResult,
    StepResult,
    VariantStatus,
    Verdict,
    lean_status,
)
from poolbench.core.spec import PoolBenchmarkSpec, parse_spec
from poolbench.core.verdict import comparison, overall_verdict
from tests.conftest import ROOT, stop_signals_at_defaults
from tests.harness.kube import MERGE, Kube, wait_for
from tests.harness.operator import OperatorProcess, create_namespace

pytestmark = pytest.mark.k8s

BIN = ROOT / ".venv" / "bin"
PLUGIN = str(BIN / "kubectl-poolbench")
COMPLETER = str(BIN / "kubectl_complete-poolbench")
ESCAPE = re.compile(r"\x1b\[")
API = "/apis/poolbench.dev/v1alpha1"

SPEC: dict[str, Any] = {
    "postgres": {"maxConnections": 20},
    "workload": {"threads": 2, "iterations": 10, "role": "app", "engine": {"poolSize": 2, "maxOverflow": 1}},
    "steps": [1, 2, 3],
}


def step(replicas: int, peak: int, outcome: Outcome, usable: int = 16, **extra: Any) -> StepResult:
    result = StepResult(
        replicas=replicas,
        predicted_peak=replicas * 2,
        usable_connections=usable,
        peak_connections=peak,
        sampled_peak_connections=peak,
        idle_at_end=peak,
        samples=40,
        queries=replicas * 20,
        throughput=100.0 * replicas,
        outcome=outcome,
        **extra,
    )
    result.latency_ms.p95 = 4.0 + replicas
    return result


def ended(phase: Phase, spec: PoolBenchmarkSpec, steps: list[StepResult], failures: int = 0) -> dict[str, Any]:
    """A direct benchmark's status once its steps ran, as the step loop leaves it."""
    verdict = overall_verdict(spec, steps)
    return BenchmarkStatus(
        phase=phase,
        message=verdict.summary,
        current_step=len(steps),
        total_steps=len(steps),
        progress=f"{len(steps)}/{len(steps)}",
        replicas=steps[-1].replicas,
        max_connections=spec.postgres.max_connections,
        peak_connections=max(s.peak_connections for s in steps),
        failures=failures,
        verdict=verdict,
        variants=[VariantStatus(name="direct", steps=steps, verdict=verdict)],
    ).to_json()


def finished_status(spec: PoolBenchmarkSpec) -> dict[str, Any]:
    return ended("Completed", spec, [step(1, 2, "Passed"), step(2, 4, "Passed"), step(3, 6, "Passed")])


def failed_status(spec: PoolBenchmarkSpec) -> dict[str, Any]:
    refused = step(
        6,
        8,
        "Failed",
        usable=8,
        errors=ErrorCounts(too_many_clients=7),
        first_error="FATAL:  sorry, too many clients already",
        first_error_class="tooManyClients",
        reason="7 connection attempts refused: tooManyClients",
    )
    return ended("Failed", spec, [step(2, 4, "Passed", usable=8), step(4, 8, "Passed", usable=8), refused], failures=7)


def variants_status(spec: PoolBenchmarkSpec) -> dict[str, Any]:
    assert spec.variants is not None
    pooler = spec.variants[1].pooler
    assert pooler is not None
    direct = [step(1, 2, "Passed"), step(2, 4, "Passed"), step(3, 6, "Passed")]
    pooled = [
        step(r, 4, "Passed", pooler=PoolerStepResult(client_peak_connections=2 * r, predicted_client_peak=2 * r))
        for r in (1, 2, 3)
    ]
    verdicts: list[Verdict | None] = [overall_verdict(spec, direct), overall_verdict(spec, pooled, pooler)]
    words = comparison(["direct", "tx"], verdicts, [direct, pooled])
    return BenchmarkStatus(
        phase="Completed",
        message=words,
        current_step=6,
        total_steps=6,
        progress="6/6",
        replicas=3,
        max_connections=20,
        peak_connections=6,
        verdict=verdicts[0],
        variants=[
            VariantStatus(name="direct", steps=direct, verdict=verdicts[0]),
            VariantStatus(name="tx", pooler=pooler, steps=pooled, verdict=verdicts[1]),
        ],
        comparison=words,
    ).to_json()


VARIANTS_SPEC = {
    **SPEC,
    "variants": [{"name": "direct"}, {"name": "tx", "pooler": {"poolMode": "transaction", "defaultPoolSize": 4}}],
}


def create(kube: Kube, ns: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """The resource, and its status written through the status subresource as the operator writes it."""
    path = f"{API}/namespaces/{ns}/poolbenchmarks"
    kube.create(
        path,
        {"apiVersion": "poolbench.dev/v1alpha1", "kind": "PoolBenchmark", "metadata": {"name": name}, "spec": spec},
    )
    if status is not None:
        set_status(kube, ns, name, status)
    got: dict[str, Any] = kube.get(f"{path}/{name}")
    return got


def set_status(kube: Kube, ns: str, name: str, status: dict[str, Any]) -> None:
    kube.patch(f"{API}/namespaces/{ns}/poolbenchmarks/{name}/status", {"status": status}, MERGE)


class Benchmarks:
    def __init__(self, kube: Kube, kubeconfig: Path):
        self.kube, self.kubeconfig = kube, kubeconfig
        self.ns = create_namespace(kube, "kplug")
        self.other_ns = create_namespace(kube, "kplug-b")
        self.finished = create(kube, self.ns, "finished", SPEC, finished_status(parse_spec(SPEC)))
        self.compared = create(kube, self.ns, "compared", VARIANTS_SPEC, variants_status(parse_spec(VARIANTS_SPEC)))
        failing_spec = {**SPEC, "postgres": {"maxConnections": 12}, "steps": [2, 4, 6]}
        self.failed = create(kube, self.other_ns, "failed", failing_spec, failed_status(parse_spec(failing_spec)))

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PLUGIN, *args, "--kubeconfig", str(self.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )


@pytest.fixture(scope="module")
def benchmarks(installed: Any, kube: Kube, operator: OperatorProcess) -> Iterator[Benchmarks]:
    """The plugin's benchmarks, their statuses written by these tests alone: the tier's operator (it
    watches every namespace) is stopped meanwhile, else it would start running them and write its own
    phases over theirs. It starts again once their namespaces are gone."""
    assert installed.kubeconfig is not None
    operator.stop()
    try:
        made = Benchmarks(kube, installed.kubeconfig)
        try:
            yield made
        finally:
            for ns in (made.ns, made.other_ns):
                kube.delete(f"/api/v1/namespaces/{ns}")
            for ns in (made.ns, made.other_ns):
                wait_for(lambda ns=ns: kube.get_or_none(f"/api/v1/namespaces/{ns}") is None, 120, what=f"{ns} gone")
    finally:
        operator.start()


def test_status_of_a_finished_benchmark_shows_its_sections_and_numbers(benchmarks: Benchmarks) -> None:
    proc = benchmarks.run("status", "finished", "-n", benchmarks.ns)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"PoolBenchmark {benchmarks.ns}/finished" in out
    assert "phase: Completed · step 3/3 · replicas 3 · peak connections 6" in out, out
    summary = benchmarks.finished["status"]["verdict"]["summary"]
    assert summary.split(".")[0] in " ".join(out.split()), out
    # the server: 20 − 3 for superusers = 17 a normal role may take, 16 beside the benchmark's monitor
    assert "max_connections 20 · reserved 3 (3 reserved for superusers) · usable 16 for role app" in out, out
    assert "PoolBenchmark results (max_connections 20)" in out
    rows = [line for line in out.splitlines() if "Passed" in line]
    assert len(rows) == 3, out
    assert "6 (sampled)" in rows[2]
    assert "Variants compared" not in out
    assert not ESCAPE.search(out), "a pipe gets plain text"


def test_status_and_report_join_the_summary_with_the_results_config_map(benchmarks: Benchmarks, tmp_path: Path) -> None:
    """As the operator writes it: each step's summary in the resource, the whole status in its results
    ConfigMap. The tables and the report read both, as complete as the whole status; -o json is the
    resource's status as it is."""
    ns, whole = benchmarks.ns, finished_status(parse_spec(SPEC))
    benchmarks.kube.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"metadata": {"name": "kept-results"}, "data": {RESULTS_KEY: json.dumps(whole)}},
    )
    create(benchmarks.kube, ns, "kept", SPEC, {**lean_status(whole), "resultsConfigMap": "kept-results"})
    kept = benchmarks.run("status", "kept", "-n", ns)
    finished = benchmarks.run("status", "finished", "-n", ns)
    assert kept.returncode == finished.returncode == 0, kept.stderr
    # the same tables under a header naming each (its rule is as wide as the name)
    assert kept.stdout.splitlines()[1:] == finished.stdout.splitlines()[1:]
    assert "/kept" in kept.stdout.splitlines()[0]
    proc = benchmarks.run("status", "kept", "-n", ns, "-o", "json")
    written = json.loads(proc.stdout)
    assert written == benchmarks.kube.get(f"{API}/namespaces/{ns}/poolbenchmarks/kept")["status"]
    assert "latencyMs" not in written["variants"][0]["steps"][0]
    target = tmp_path / "kept.html"
    assert benchmarks.run("report", "kept", "-n", ns, "-o", str(target)).returncode == 0
    embedded = target.read_text().split('id="poolbench-document">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["status"] == {**whole, "resultsConfigMap": "kept-results"}


def test_status_of_a_failed_benchmark_names_the_step_and_first_error(benchmarks: Benchmarks) -> None:
    proc = benchmarks.run("status", "failed", "--namespace", benchmarks.other_ns)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "phase: Failed" in out
    assert "failures 7" in out
    # 12 − 3 for superusers − 1 for the monitor: 8 slots, 2 a replica: 4 replicas fit, 6 do not
    assert "max_connections 12 · reserved 3 (3 reserved for superusers) · usable 8 for role app" in out, out
    assert "tooManyClients 7" in out
    assert "First error (tooManyClients): FATAL:  sorry, too many clients already" in out, out
    verdict = benchmarks.failed["status"]["verdict"]
    assert (verdict["maxSafeReplicas"], verdict["firstFailingReplicas"]) == (4, 6)


def test_status_with_variants_shows_each_variant_and_the_comparison(benchmarks: Benchmarks) -> None:
    proc = benchmarks.run("status", "compared", "-n", benchmarks.ns)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "variant direct: direct, QueuePool" in out, out
    assert "variant tx: through PgBouncer (transaction mode, pool 4" in out, out
    assert "Variants compared" in out
    assert "PgBouncer transaction, pool 4" in out
    assert "Comparison:" in out
    first_words = " ".join(benchmarks.compared["status"]["comparison"].split()[:4])
    assert first_words in " ".join(out.split()), out


@pytest.mark.parametrize("name", ["finished", "failed", "compared"])
def test_output_json_and_yaml_are_the_resource_status(benchmarks: Benchmarks, name: str) -> None:
    ns = benchmarks.other_ns if name == "failed" else benchmarks.ns
    live = benchmarks.kube.get(f"{API}/namespaces/{ns}/poolbenchmarks/{name}")["status"]
    proc = benchmarks.run("status", name, "-n", ns, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == live
    proc = benchmarks.run("status", name, "-n", ns, "-o", "yaml")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == live


def test_report_writes_the_html_report_of_the_live_resource(benchmarks: Benchmarks, tmp_path: Path) -> None:
    target = tmp_path / "compared.html"
    proc = benchmarks.run("report", "compared", "-n", benchmarks.ns, "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"report written to {target}\n"
    page = target.read_text()
    assert page.lstrip().lower().startswith("<!doctype html>"), page[:200]
    assert "compared" in page
    assert "tx" in page
    assert "PgBouncer" in page
    unwritable = benchmarks.run("report", "compared", "-n", benchmarks.ns, "-o", str(tmp_path / "no" / "r.html"))
    assert unwritable.returncode == 1
    assert len(unwritable.stderr.splitlines()) == 1, unwritable.stderr


def on_terminal(benchmarks: Benchmarks, *args: str, env: dict[str, str]) -> str:
    """The plugin's output with a terminal as its stdout (a pseudo-terminal), as a user sees it (no
    NO_COLOR or FORCE_COLOR from the caller: ``env`` says)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [PLUGIN, *args, "--kubeconfig", str(benchmarks.kubeconfig)],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}, "TERM": "xterm", **env},
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


def test_colours_on_a_terminal_and_none_with_no_color(benchmarks: Benchmarks) -> None:
    coloured = on_terminal(benchmarks, "status", "failed", "-n", benchmarks.other_ns, env={})
    assert ESCAPE.search(coloured), coloured
    assert "\x1b[31m" in coloured or "\x1b[91m" in coloured, "a failed benchmark's verdict is red"
    plain = on_terminal(benchmarks, "status", "failed", "-n", benchmarks.other_ns, env={"NO_COLOR": "1"})
    assert "phase: Failed" in plain
    assert not ESCAPE.search(plain), plain


def test_list_all_namespaces_shows_each_with_its_phase_and_verdict(benchmarks: Benchmarks) -> None:
    proc = benchmarks.run("list", "-A")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert rows["finished"].split()[:3] == [benchmarks.ns, "finished", "Completed"], proc.stdout
    assert rows["failed"].split()[:3] == [benchmarks.other_ns, "failed", "Failed"], proc.stdout
    assert rows["compared"].split()[:3] == [benchmarks.ns, "compared", "Completed"], proc.stdout
    assert "safe up to 4, fails at 6" in rows["failed"]
    assert "direct safe up to 3; tx safe up to 3" in rows["compared"]
    only_one = benchmarks.run("list", "-n", benchmarks.other_ns)
    assert only_one.returncode == 0, only_one.stderr
    assert "failed" in only_one.stdout
    assert "finished" not in only_one.stdout


def test_a_missing_benchmark_is_one_line_and_exit_1(benchmarks: Benchmarks) -> None:
    proc = benchmarks.run("status", "nope", "-n", benchmarks.ns)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"kubectl poolbench: poolbenchmark {benchmarks.ns}/nope not found\n"
    watch = benchmarks.run("watch", "nope", "-n", benchmarks.ns)
    assert (watch.returncode, watch.stderr) == (1, proc.stderr)
    unreachable = subprocess.run(
        [PLUGIN, "list", "--kubeconfig", str(benchmarks.kubeconfig.parent / "missing.kubeconfig")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1
    assert len(unreachable.stderr.splitlines()) == 1, unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def running_status(progress: int, live: int) -> dict[str, Any]:
    return BenchmarkStatus(
        phase="Running",
        message=f"step {progress}/3",
        current_step=progress,
        total_steps=3,
        progress=f"{progress}/3",
        replicas=progress,
        max_connections=20,
        peak_connections=live,
        live_connections=live,
    ).to_json()


def start_watch(benchmarks: Benchmarks, name: str) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """A running benchmark (step 1 of 3, 3 connections), and ``watch`` on it: the process, the lines it
    printed so far (read as they come) and the thread that reads them."""
    create(benchmarks.kube, benchmarks.ns, name, SPEC, running_status(1, 3))
    proc = subprocess.Popen(
        [PLUGIN, "watch", name, "-n", benchmarks.ns, "--kubeconfig", str(benchmarks.kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=stop_signals_at_defaults,  # a terminal's Ctrl-C, even when this tier runs in the background
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        lines.extend(iter(proc.stdout.readline, ""))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    wait_for(lambda: any("step 1/3" in line for line in lines), 30, what="the first progress line")
    return proc, lines, thread


def test_watch_follows_a_benchmark_until_it_completes(benchmarks: Benchmarks) -> None:
    proc, lines, pump = start_watch(benchmarks, "watched")
    set_status(benchmarks.kube, benchmarks.ns, "watched", running_status(2, 6))
    wait_for(lambda: any("step 2/3" in line for line in lines), 30, what="the second step's line")
    assert proc.poll() is None, "still watching a running benchmark"
    set_status(benchmarks.kube, benchmarks.ns, "watched", finished_status(parse_spec(SPEC)))
    assert proc.wait(timeout=30) == 0
    pump.join(10)
    assert "live connections 3" in lines[0], lines
    assert any("live connections 6" in line for line in lines), lines
    assert lines[-1].startswith("watched Completed:"), lines
    assert proc.stderr is not None
    assert proc.stderr.read() == ""


def test_watch_of_a_failed_benchmark_exits_1_and_ctrl_c_exits_quietly(benchmarks: Benchmarks) -> None:
    failed = benchmarks.run("watch", "failed", "-n", benchmarks.other_ns)
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines()[-1].startswith("failed Failed:"), failed.stdout
    proc, _, _ = start_watch(benchmarks, "interrupted")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert proc.stderr is not None
    assert proc.stderr.read() == ""


def test_through_kubectl_with_the_plugin_on_path(benchmarks: Benchmarks) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["kubectl", "poolbench", "status", "finished", "-n", benchmarks.ns, "--kubeconfig", str(benchmarks.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "phase: Completed" in proc.stdout
    # kubectl's own completion asks the plugin's completer for the names
    completion = subprocess.run(
        ["kubectl", "__complete", "poolbench", "status", "-n", benchmarks.ns, "f"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "KUBECONFIG": str(benchmarks.kubeconfig)},
    )
    assert completion.returncode == 0, completion.stderr
    assert completion.stdout.splitlines()[0] == "finished", completion.stdout
    direct = subprocess.run(
        [COMPLETER, "status", "-n", benchmarks.ns, ""],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "KUBECONFIG": str(benchmarks.kubeconfig)},
    )
    assert set(direct.stdout.splitlines()[:-1]) >= {"finished", "compared"}, direct.stdout
    assert direct.stdout.splitlines()[-1] == ":4"
