"""Variants in the pure core: the spec, the pooler arithmetic, error classes, pooler reads, config."""

from __future__ import annotations

from typing import Any

import pytest

from poolbench.core.budget import pooled_replica_limits, pooled_safe_replicas, predict
from poolbench.core.contracts.replica_env import WorkloadConfig
from poolbench.core.outcomes import FULL_MESSAGE, classify_exception, classify_message, short_message
from poolbench.core.pooler import ADMIN_USER, pgbouncer_ini, userlist
from poolbench.core.results import Compatibility, CompatibilityFinding, PoolerStepResult, StepResult, Verdict
from poolbench.core.sampling import PoolerRead, Sample, StepAccumulator, merge_pooler_reads, pooler_read_from_rows
from poolbench.core.spec import PoolBenchmarkSpec, PoolerSpec, SpecError, parse_spec
from poolbench.core.verdict import comparison, pooled_verdict
from poolbench.core.workload_env import workload_env

SEED = {"steps": [5, 10], "workload": {"threads": 15}}


def spec_with(*variants: dict[str, Any], **extra: object) -> PoolBenchmarkSpec:
    return parse_spec({**SEED, "variants": list(variants), **extra})


def test_without_variants_the_benchmark_is_one_direct_variant() -> None:
    spec = parse_spec(SEED)
    assert [v.name for v in spec.effective_variants()] == ["direct"]
    assert spec.effective_variants()[0].pooler is None


def test_a_variant_engine_replaces_the_workload_engine() -> None:
    spec = spec_with({"name": "a"}, {"name": "b", "engine": {"poolClass": "NullPool"}})
    a, b = spec.effective_variants()
    assert spec.for_variant(a).workload.engine.pool_class == "QueuePool"
    assert spec.for_variant(b).workload.engine.pool_class == "NullPool"
    assert spec.workload.engine.pool_class == "QueuePool"  # the spec itself is unchanged


@pytest.mark.parametrize(
    ("variants", "path", "text"),
    [
        ([{"name": "a"}, {"name": "a", "pooler": {}}], "spec.variants[1].name", "duplicate variant name 'a'"),
        ([{"name": "a"}, {"name": "b"}], "spec.variants[1]", "same pooler and engine as spec.variants[0]"),
        ([{"name": "Tx"}], "spec.variants[0].name", "String should match pattern"),
        ([{"name": "tx--a"}], "spec.variants[0].name", "String should match pattern"),  # "--" separates children
        ([{"name": "a-very-long-name"}], "spec.variants[0].name", "at most 11 characters"),
        ([{"name": "p", "pooler": {"poolMode": "statement"}}], "spec.variants[0].pooler.poolMode", "session"),
        ([{"name": "p", "pooler": {"maxClientConn": 1}}], "spec.variants[0].pooler.maxClientConn", "greater than"),
        ([{"name": "p", "pooler": {"defaultPoolSize": 0}}], "spec.variants[0].pooler.defaultPoolSize", "greater than"),
        ([{"name": "p", "pooler": {"type": "Odyssey"}}], "spec.variants[0].pooler.type", "PgBouncer"),
        ([{"name": "p", "pooler": {"poolSize": 3}}], "spec.variants[0].pooler.poolSize", "unknown field"),
        ([], "spec.variants", "at least 1 item"),
    ],
)
def test_bad_variants_are_named_by_path(variants: list[Any], path: str, text: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "variants": variants})
    assert any(p == path and text in m for p, m in err.value.problems), err.value.problems


def test_pooler_arithmetic_knows_the_seed() -> None:
    spec = parse_spec(SEED)  # QueuePool 5 + 10, 15 threads: 15 per replica
    tx = PoolerSpec(pool_mode="transaction", default_pool_size=20, max_client_conn=200)
    p = predict(spec, 10, tx)
    assert p.client_peak == 150
    assert p.client_capacity == 199
    assert p.server_capacity == 20
    assert p.peak == 20
    assert p.waiting == 130
    assert p.idle == 50
    assert p.fits
    assert predict(spec, 2, tx).peak == 20  # min(30 clients, 20)
    assert predict(spec, 1, tx).peak == 15
    assert not predict(spec, 14, tx).fits  # 210 clients > 199
    assert pooled_safe_replicas(spec, tx) == 13  # 199 // 15
    session = PoolerSpec(
        pool_mode="session", default_pool_size=20, reserve_pool_size=5, max_client_conn=200, replicas=2
    )
    assert predict(spec, 10, session).server_capacity == 50  # 2 instances × (20 + 5)
    assert predict(spec, 10, session).client_capacity == 398
    # 5 kept clients per replica at random over 2 instances of 25 server connections each: 5 replicas'
    # 25 fit even on one instance; 6 replicas' 30 put more than 25 on one with chance
    # 2 × P(Binomial(30, 1/2) > 25) = 2 × 31931 / 2^30 ≈ 6e-5, not below one in a million.
    # Without waiting: 1 replica's 15 clients; 2 replicas' 30 the same chance again.
    assert pooled_safe_replicas(spec, session) == 5
    assert pooled_replica_limits(spec, session) == (1, 5)
    direct = predict(spec, 10)
    assert direct.peak == 150
    assert direct.client_capacity == 0
    assert not direct.fits


def test_pooled_verdict_puts_prediction_beside_measurement() -> None:
    spec = parse_spec(SEED)
    tx = PoolerSpec(pool_mode="transaction", default_pool_size=20, max_client_conn=200)
    at_pooler = PoolerStepResult(client_peak_connections=150, predicted_client_peak=150, waiting_peak=120)
    passed = StepResult(replicas=10, outcome="Passed", pooler=at_pooler, peak_connections=20, predicted_peak=20)
    passed.latency_ms.p95 = 700.0
    verdict = pooled_verdict(spec, [passed], tx)
    assert verdict.max_safe_replicas == 10
    assert verdict.first_failing_replicas is None
    assert "all steps passed up to 10 replicas" in verdict.summary
    assert "20 server backends (predicted ≤ 20), 150 clients at the pooler (predicted 150)" in verdict.summary
    assert "server backends ≤ 1 × (20) = 20 of 99 usable" in verdict.reason
    too_big = PoolerSpec(pool_mode="transaction", default_pool_size=80, reserve_pool_size=30)
    assert "more than the 99 usable" in pooled_verdict(spec, [passed], too_big).reason
    assert "may open 110 server connections but the server allows 99" in pooled_verdict(spec, [passed], too_big).summary
    assert "but the server allows" not in verdict.summary


def test_comparison_names_the_variant_that_scales_furthest() -> None:
    spec = parse_spec(SEED)
    ok5 = StepResult(replicas=5, outcome="Passed", peak_connections=75)
    fail10 = StepResult(replicas=10, outcome="Failed", peak_connections=99, first_error_class="tooManyClients")
    ok10 = StepResult(replicas=10, outcome="Passed", peak_connections=20)
    from poolbench.core.verdict import overall_verdict

    direct = overall_verdict(spec, [ok5, fail10])
    pooled = pooled_verdict(spec, [ok5, ok10], PoolerSpec(pool_mode="transaction"))
    text = comparison(["direct", "tx"], [direct, pooled], [[ok5, fail10], [ok5, ok10]])
    assert text.startswith("Scales furthest: tx (10 replicas).")
    assert "direct: 5 replicas safe, fails at 10 (tooManyClients), peak 99 server backends" in text


def test_a_variant_with_incompatibilities_is_not_the_winner_without_them() -> None:
    spec = parse_spec(SEED)
    ok5 = StepResult(replicas=5, outcome="Passed", peak_connections=75)
    fail10 = StepResult(replicas=10, outcome="Failed", peak_connections=99, first_error_class="tooManyClients")
    ok10 = StepResult(replicas=10, outcome="Passed", peak_connections=20)
    from poolbench.core.verdict import overall_verdict

    direct = overall_verdict(spec, [ok5, fail10])
    pooled = pooled_verdict(spec, [ok5, ok10], PoolerSpec(pool_mode="transaction"))
    leak = CompatibilityFinding(kind="sessionSettingLeaked", evidence="client B saw it", fix="SET LOCAL")
    lost = CompatibilityFinding(kind="sessionSettingLost", evidence="client A lost it", fix="SET LOCAL")
    found = Compatibility(pool_mode="transaction", findings=[leak, lost])
    names, steps = ["direct", "tx-nullpool"], [[ok5, fail10], [ok5, ok10]]
    verdicts: list[Verdict | None] = [direct, pooled]
    text = comparison(names, verdicts, steps, [None, found])
    assert text.startswith(
        "tx-nullpool scales furthest, but: 2 incompatibilities (see its compatibility findings); without any:"
        " direct (5 replicas)."
    )
    assert "tx-nullpool: 10 replicas safe, peak 75 server backends, 2 incompatibilities." in text
    one = comparison(names, verdicts, steps, [None, Compatibility(findings=[leak])])
    assert one.startswith("tx-nullpool scales furthest, but: 1 incompatibility")
    alone = comparison(["tx-nullpool"], [pooled], [[ok5, ok10]], [found])
    assert alone.startswith(
        "tx-nullpool scales furthest, but: 2 incompatibilities (see its compatibility findings);"
        " no variant without them passed a step."
    )
    # Findings that are not the furthest variant's change no ranking.
    clean = comparison(names, verdicts, steps, [found, None])
    assert clean.startswith("Scales furthest: tx-nullpool (10 replicas).")


@pytest.mark.parametrize(
    ("message", "pooled", "cls"),
    [
        (
            'connection to server at "127.0.0.1", port 6432 failed: '
            "FATAL:  no more connections allowed (max_client_conn)",
            True,
            "poolerMaxClientConn",
        ),
        ("FATAL:  query_wait_timeout\nserver closed the connection unexpectedly", True, "poolerQueryWaitTimeout"),
        ("ERROR: server login has been failing, try again later (server_login_retry)", True, "poolerServerLogin"),
        ("FATAL: sorry, too many clients already", True, "poolerServerLogin"),  # the server refused the pooler
        ("FATAL: sorry, too many clients already", False, "tooManyClients"),
        (
            "FATAL: remaining connection slots are reserved for roles with the SUPERUSER attribute",
            False,
            "reservedSlots",
        ),
        ("server closed the connection unexpectedly", True, "other"),
    ],
)
def test_pooler_texts_have_their_own_classes(message: str, pooled: bool, cls: str) -> None:
    assert classify_message(message, pooled=pooled) == cls


def test_the_full_libpq_message_kept_by_the_workload_is_classified() -> None:
    # psycopg2 raises with libpq's last line only; the workload keeps the whole text on the exception.
    exc = RuntimeError("server closed the connection unexpectedly")
    assert classify_exception(exc, pooled=True) == "other"
    setattr(exc, FULL_MESSAGE, "FATAL: query_wait_timeout server closed the connection unexpectedly")
    assert classify_exception(exc, pooled=True) == "poolerQueryWaitTimeout"
    assert short_message(exc).startswith("FATAL: query_wait_timeout")


COLUMNS = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
]


def test_show_pools_rows_of_the_benchmark_database_only() -> None:
    rows = [
        ("pgbouncer", "pgbouncer", 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "statement"),  # the console itself
        ("postgres", "postgres", 12, 4, 0, 0, 12, 0, 0, 0, 0, 0, 0, 1, 427000, "session"),
    ]
    read = pooler_read_from_rows(COLUMNS, rows, "postgres")
    assert (read.clients, read.waiting, read.servers, read.max_wait_ms) == (16, 4, 12, 1427.0)
    both = merge_pooler_reads([read, PoolerRead(clients=3, waiting=1, max_wait_ms=5.0, servers=2)])
    assert (both.clients, both.waiting, both.servers, both.max_wait_ms) == (19, 5, 14, 1427.0)
    assert not merge_pooler_reads([read, PoolerRead(ok=False, error="gone")]).ok  # one instance unseen: a gap


def test_pooled_ghosts_are_the_clients_held_after_the_work() -> None:
    acc = StepAccumulator(replicas=2, pooled=True)
    acc.add(Sample(t=0.1, total=4, by_state={"active": 4}, pooler=PoolerRead(clients=10, waiting=6)))
    acc.mark_work_done(at=0.2)
    acc.add(Sample(t=0.3, total=4, by_state={"idle": 4}, pooler=PoolerRead(clients=6)))
    acc.add(Sample(t=0.4, total=4, by_state={"idle": 4}, pooler=None))  # a tick without the pooler: a gap
    step = acc.fill(StepResult(replicas=2))
    assert step.pooler is not None
    assert step.pooler.client_peak_connections == 10
    assert step.pooler.waiting_peak == 6
    assert step.idle_at_end == 6  # the app's idle clients at the pooler, not the server's 4
    assert step.server_idle_at_end == 4
    assert step.pooler.sample_gaps == 1


def test_pgbouncer_config_from_the_variant() -> None:
    pooler = PoolerSpec(
        pool_mode="transaction",
        default_pool_size=20,
        reserve_pool_size=5,
        max_client_conn=200,
        server_idle_timeout_seconds=30,
        query_wait_timeout_seconds=10,
    )
    ini = pgbouncer_ini(
        pooler,
        server_host="db",
        server_port=5432,
        database="postgres",
        listen_addr="*",
        listen_port=6432,
        auth_file="/etc/x/userlist.txt",
    )
    lines = set(ini.splitlines())
    assert "postgres = host=db port=5432 dbname=postgres" in lines
    for line in (
        "pool_mode = transaction",
        "default_pool_size = 20",
        "reserve_pool_size = 5",
        "max_client_conn = 200",
        "server_idle_timeout = 30",
        "query_wait_timeout = 10",
        "reserve_pool_timeout = 5",
        f"admin_users = {ADMIN_USER}",
        "auth_type = scram-sha-256",
        "unix_socket_dir = ",
        "listen_addr = *",
        "listen_port = 6432",
    ):
        assert line in lines, line
    # A quote inside a password is doubled (PgBouncer's auth_file syntax); one line per user, sorted.
    assert userlist({"postgres": 'pa"ss', ADMIN_USER: "x"}) == f'"{ADMIN_USER}" "x"\n"postgres" "pa""ss"\n'


def test_a_pooled_workload_knows_it_is_behind_a_pooler() -> None:
    spec = spec_with({"name": "tx", "pooler": {"poolMode": "transaction"}})
    pooler = spec.effective_variants()[0].pooler
    env = workload_env(spec, pooler=pooler)
    assert env["POOLBENCH_POOLER"] == "PgBouncer"
    assert WorkloadConfig.from_env(env).pooled
    assert not WorkloadConfig.from_env(workload_env(spec)).pooled


def test_the_example_seed_pgbouncer_is_valid() -> None:
    from poolbench.core.spec import load_text
    from tests.conftest import ROOT

    bench = load_text((ROOT / "manifests/examples/seed-pgbouncer.yaml").read_text())
    assert [v.name for v in bench.spec.effective_variants()] == ["direct", "tx-nullpool", "session"]
