"""The HTML report: what it prints is the status' own numbers, every value is escaped, and it stands
without a timeline (a cluster resource) and without anything outside the file."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from poolbench import cli
from poolbench.core.benchmark import full_status
from poolbench.core.plan import plan
from poolbench.core.results import (
    BenchmarkStatus,
    ErrorCounts,
    GhostConnection,
    PeakByState,
    Percentiles,
    PoolerStepResult,
    StepResult,
    VariantStatus,
    Verdict,
)
from poolbench.core.spec import PoolBenchmarkSpec, PoolerSpec, parse_spec
from poolbench.report import STEP_COLUMNS, number, render_html, step_value

HOSTILE = "</script><img src=x onerror=alert(1)>"


def measured_step(replicas: int, outcome: str, scale: float, **fields: Any) -> StepResult:
    """A step with every table column set to its own distinct value."""
    return StepResult(
        replicas=replicas,
        outcome=outcome,
        predicted_peak=5 * replicas,
        predicted_idle=2 * replicas,
        usable_connections=26,
        peak_connections=5 * replicas - 1,
        peak_source="serverLog",
        sampled_peak_connections=5 * replicas - 2,
        client_peak_connections=5 * replicas - 1,
        idle_at_end=2 * replicas + 1,
        server_ghosts=2 * replicas,
        refusals=3 if outcome == "Failed" else 0,
        queries=1000 + replicas,
        throughput=123.456 * scale,
        latency_ms=Percentiles(p50=10.5 * scale, p95=20.25 * scale, p99=30.125 * scale, max=99.999 * scale),
        checkout_wait_ms=Percentiles(p50=0.012 * scale, p95=1.5 * scale, p99=2.75 * scale, max=1063.47 * scale),
        peak_by_state=PeakByState(active=3 * replicas, idle=replicas, idle_in_transaction=1),
        **fields,
    )


def spec_json(**spec: Any) -> dict[str, Any]:
    return parse_spec({"steps": [2, 6], **spec}).model_dump(by_alias=True, exclude_none=True)


def two_variant_document() -> dict[str, Any]:
    pooler = PoolerSpec(pool_mode="transaction", default_pool_size=8, max_client_conn=50)
    direct_steps = [
        measured_step(2, "Passed", 1.0),
        measured_step(
            6,
            "Failed",
            1.7,
            errors=ErrorCounts(too_many_clients=7, pool_timeout=2),
            first_error="FATAL: sorry, too many clients already",
            first_error_class="tooManyClients",
            reason="7 connections refused",
        ),
    ]
    pooled_steps = [
        measured_step(2, "Passed", 0.9, pooler=PoolerStepResult(client_peak_connections=10, waiting_peak=1)),
        measured_step(6, "Passed", 1.3, pooler=PoolerStepResult(client_peak_connections=30, waiting_peak=4)),
    ]
    direct = VariantStatus(
        name="direct", steps=direct_steps, verdict=Verdict(max_safe_replicas=2, predicted_max_safe_replicas=5)
    )
    pooled = VariantStatus(
        name="pgbouncer",
        pooler=pooler,
        steps=pooled_steps,
        verdict=Verdict(max_safe_replicas=6, predicted_max_safe_replicas=6, summary="6 replicas ran safely"),
    )
    status = BenchmarkStatus(
        phase="Completed",
        max_connections=30,
        verdict=Verdict(max_safe_replicas=2, summary="2 replicas ran safely; 6 replicas failed"),
        variants=[direct, pooled],
        comparison="pgbouncer holds 6 replicas where direct holds 2",
    )
    return {
        "apiVersion": "poolbench.dev/v1alpha1",
        "kind": "PoolBenchmark",
        "metadata": {"name": "two-ways"},
        "spec": spec_json(
            postgres={"maxConnections": 30},
            variants=[
                {"name": "direct"},
                {"name": "pgbouncer", "pooler": {"poolMode": "transaction", "defaultPoolSize": 8}},
            ],
        ),
        "status": status.to_json(),
    }


class StepTable(HTMLParser):
    """The step table's rows: each a list of (data-field, text) for its cells."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.rows: list[list[tuple[str, str]]] = []
        self._in_table = False
        self._field: str | None = None
        self._text = ""
        self._header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("class") == "steps":
            self._in_table = True
        if not self._in_table:
            return
        if tag == "tr" and attributes.get("data-variant") is not None:
            self.rows.append([])
        if tag in ("td", "th") and attributes.get("data-field"):
            self._field, self._text, self._header = attributes["data-field"], "", tag == "th"

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        if tag in ("td", "th") and self._field is not None:
            if self._header:
                self.headers.append(self._field)
            else:
                self.rows[-1].append((self._field, self._text))
            self._field = None

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self._text += data


def test_every_number_in_the_step_table_is_the_status_own() -> None:
    document = two_variant_document()
    table = StepTable()
    table.feed(render_html(document))
    assert table.headers == [path for _, path, _ in STEP_COLUMNS]
    steps = [s for v in full_status(document["status"])["variants"] for s in v["steps"]]
    assert len(table.rows) == len(steps) == 4
    for row, step in zip(table.rows, steps, strict=True):
        assert [path for path, _ in row] == table.headers
        for path, text in row:
            value = step_value(step, path)
            assert text == number(value), (path, text, value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert float(text) == pytest.approx(value, abs=0.005), (path, text, value)
    # The errors column is the sum of the classes: 7 + 2 in the failing direct step.
    assert dict(table.rows[1])["errors"] == "9"
    assert dict(table.rows[1])["checkoutWaitMs.max"] == number(1063.47 * 1.7)


def test_a_hostile_statement_application_and_name_are_text_everywhere() -> None:
    document = two_variant_document()
    document["metadata"]["name"] = HOSTILE
    document["spec"]["workload"]["statement"] = f"SELECT '{HOSTILE}'"
    step = document["status"]["variants"][0]["steps"][1]
    step["ghostConnections"] = [GhostConnection(pid=42, replica=HOSTILE, age_seconds=3.5).to_text()]
    step["peakByReplica"] = {HOSTILE: 3}
    step["firstError"] = f'FATAL: role "{HOSTILE}" does not exist'
    document["status"]["verdict"]["summary"] = HOSTILE
    page = render_html(document)
    assert "<img" not in page
    assert "onerror=alert(1)>" not in page
    assert page.count("</script>") == 1  # the embedded document's own end, nothing else closes it
    assert page.count("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") >= 4  # title, verdict, ghost, YAML...
    embedded = re.search(r'<script type="application/json" id="poolbench-document">(.*?)</script>', page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1)) == document  # the raw JSON, escaped, reads back whole


def test_the_page_asks_for_nothing_outside_itself() -> None:
    page = render_html(two_variant_document())
    assert "default-src 'none'" in page  # the browser refuses any fetch the page might still contain
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script src" not in page
    assert "@import" not in page
    assert "url(" not in page


def test_every_chart_has_shapes_and_the_variants_are_compared() -> None:
    page = render_html(two_variant_document())
    for chart in ("connections-by-step", "peaks-per-step", "latencyMs-per-step", "checkoutWaitMs-per-step"):
        figure = page.split(f'id="{chart}"', 1)[1].split("</figure>", 1)[0]
        assert figure.count("<rect") > 0, chart
        assert figure.count("<path") > 0, chart
    compared = page.split('id="variants-compared"', 1)[1].split("</figure>", 1)[0]
    assert "direct · max safe replicas: 2" in compared
    assert "pgbouncer · max safe replicas: 6" in compared
    connections = page.split('id="variants-connections"', 1)[1].split("</figure>", 1)[0]
    assert "direct · highest peak connections: 29" in connections  # the 6-replica step's 5 × 6 − 1
    assert "max_connections 30" in connections
    assert "pgbouncer holds 6 replicas where direct holds 2" in page


def test_without_a_timeline_the_report_says_so_and_draws_the_steps_peaks() -> None:
    # A custom resource read from a cluster: status, no timeline.
    page = render_html(two_variant_document())
    assert "connections-over-time" not in page
    assert "has no timeline" in page
    assert "direct·2 · active: 6" in page  # peakByState.active of direct's 2-replica step


def test_with_a_timeline_the_connections_chart_draws_states_limits_and_steps() -> None:
    document = two_variant_document()
    document["timeline"] = [
        {"t": t / 10, "ok": True, "total": 4 + t % 3, "active": 3, "idle": 1 + t % 3} for t in range(40)
    ]
    document["serverTimeline"] = [
        {"start": 0.5 + i, "end": 1.2 + i, "open": [[0.5 + i, 0], [0.7 + i, 5], [1.1 + i, 2]], "refusals": []}
        for i in range(4)
    ]
    page = render_html(document)
    chart = page.split('id="connections-over-time"', 1)[1].split("</figure>", 1)[0]
    assert chart.count('class="area"') == 2  # active and idle (no idle in transaction, no other state)
    assert chart.count('class="exact"') == 4
    assert chart.count('class="boundary"') == 8
    assert "max_connections 30" in chart
    assert "usable 26" in chart
    assert ">pgbouncer·6</text>" in chart  # each step labelled: the log has an account of every step


def test_the_plan_section_says_what_poolbench_plan_says() -> None:
    document = two_variant_document()
    page = render_html(document)
    spec = PoolBenchmarkSpec.model_validate(document["spec"])
    for variant in spec.effective_variants():
        expected = plan(spec.for_variant(variant), 6, variant.pooler)
        assert expected.recommendations
        for recommendation in expected.recommendations:
            assert escaped(recommendation.text) in page
        for note in expected.notes:
            assert escaped(note) in page


def escaped(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def test_a_providers_limits_name_their_published_source() -> None:
    document = two_variant_document()
    document["spec"] = spec_json(postgres={"provider": {"name": "rds", "memoryGiB": 1}})
    spec = parse_spec({"steps": [2, 6], "postgres": {"provider": {"name": "rds", "memoryGiB": 1}}})
    assert spec.postgres.provider is not None
    page = render_html(document)
    assert escaped(spec.postgres.provider.source()) in page
    assert "The plan could not be computed" not in page


def test_the_manifest_runs_again() -> None:
    document = two_variant_document()
    page = render_html(document)
    manifest = page.split('<pre id="manifest">', 1)[1].split("</pre>", 1)[0]
    import html

    import yaml

    again = yaml.safe_load(html.unescape(manifest))
    assert again["kind"] == "PoolBenchmark"
    assert parse_spec(again["spec"]).model_dump(by_alias=True, exclude_none=True) == document["spec"]


def test_poolbench_report_writes_the_page_of_a_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r.json"
    results.write_text(json.dumps(two_variant_document()))
    assert cli.main(["report", str(results), "-o", str(tmp_path / "out.html")]) == 0
    assert "2 replicas ran safely; 6 replicas failed" in (tmp_path / "out.html").read_text()
    assert cli.main(["report", str(results)]) == 0  # next to the JSON by default
    assert (tmp_path / "r.html").exists()
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"spec": {}}', "holds no status"),
        ('{"status": {}}', "holds no spec"),
    ],
)
def test_poolbench_report_refuses_what_is_not_a_results_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    results = tmp_path / "r.json"
    results.write_text(content)
    assert cli.main(["report", str(results), "-o", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.html").exists()


def test_poolbench_report_will_not_overwrite_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r.json"
    results.write_text(json.dumps(two_variant_document()))
    assert cli.main(["report", str(results), "-o", str(results)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert json.loads(results.read_text())["kind"] == "PoolBenchmark"


@pytest.mark.parametrize(
    ("document", "shown"),
    [
        ({"spec": {}, "status": {}}, "No step ran."),
        (
            {
                "spec": {"steps": {"search": {"min": 1, "max": 8}}},
                "status": {"variants": [{"steps": [{"replicas": 3}]}]},
            },
            "Target replicas (the largest step)",
        ),
        (
            {"spec": {"workload": {"threads": "many"}}, "status": {"phase": "Failed", "message": "the spec is wrong"}},
            "The plan could not be computed: spec.workload.threads",
        ),
        (
            {"spec": {"steps": [1]}, "status": {"variants": [{"steps": [{"replicas": 1}]}]}, "timeline": []},
            "No read of the server succeeded",
        ),
    ],
)
def test_a_partial_or_early_document_still_renders_and_says_what_is_missing(
    document: dict[str, Any], shown: str
) -> None:
    assert shown in render_html(document)
