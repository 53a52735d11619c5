"""`poolbench plan`: the connection budget without running anything (pure arithmetic and the CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench import cli
from poolbench.core.budget import rollout_safe, surge_pods, usable_connections
from poolbench.core.plan import plan
from poolbench.core.results import StepResult
from poolbench.core.spec import PROVIDER_RULES, PoolerSpec, SpecError, parse_spec
from poolbench.core.verdict import overall_verdict
from tests.conftest import make_doc

SEED = {"steps": [5, 10], "workload": {"threads": 15}}


@pytest.mark.parametrize(
    ("replicas", "surge", "pods"),
    [
        (4, "25%", 1),
        (5, "25%", 2),
        (8, "25%", 2),
        (10, "25%", 3),
        (10, 1, 1),
        (10, "0%", 0),
        (3, "100%", 3),
    ],
)
def test_surge_is_rounded_up_like_the_deployment_controller(replicas: int, surge: int | str, pods: int) -> None:
    assert surge_pods(replicas, surge) == pods


def test_the_seed_budget_at_rest_and_during_a_rollout() -> None:
    p = plan(parse_spec({**SEED, "rollout": {"maxSurge": "25%"}}))
    assert (p.per_replica_peak, p.per_replica_idle, p.usable_connections) == (15, 5, 100)
    assert p.max_safe_replicas == 6  # 6 × 15 = 90 ≤ 100
    # 6 + 2 surge pods need 120; 5 + 2 need 105; 4 + 1 need 75.
    assert p.max_safe_replicas_during_rollout == 4
    assert rollout_safe(15, 100, 1) == 5
    assert rollout_safe(15, 100, 0) == 6


def test_without_a_rollout_the_deployment_default_is_assumed() -> None:
    assert plan(parse_spec(SEED)).max_surge == "25%"


def test_a_normal_role_loses_the_reserved_slots_and_the_plan_has_no_monitor() -> None:
    p = plan(
        parse_spec(
            {
                **SEED,
                "workload": {"threads": 15, "role": "app"},
                "postgres": {"maxConnections": 100, "superuserReservedConnections": 3},
            }
        )
    )
    assert p.usable_connections == 97  # the benchmark's own usable is 96: it also holds a monitor
    assert usable_connections(parse_spec(SEED | {"workload": {"threads": 15, "role": "app"}})) == 96


def test_what_would_make_ten_replicas_fit() -> None:
    p = plan(parse_spec({**SEED, "rollout": {"maxSurge": "25%"}}), target_replicas=10)
    numbers = {k: v for r in p.recommendations for k, v in r.to_json().items() if k != "text"}
    # 10 replicas + 3 surge pods = 13 pods share 100 connections: 7 each.
    assert numbers["maxConnectionsPerReplica"] == 7
    assert numbers["poolSize"] == 5
    assert numbers["maxOverflow"] == 2
    assert numbers["maxConnections"] == 13 * 15  # or a server that holds them all
    assert numbers["poolerClientConnections"] == 195
    assert all(r.text for r in p.recommendations)


def test_a_target_that_already_fits_says_so() -> None:
    p = plan(parse_spec(SEED), target_replicas=4)
    assert len(p.recommendations) == 1
    assert p.recommendations[0].text.startswith("4 replicas fit: 5 pods")


def test_pooled_plans_count_clients_at_the_pooler() -> None:
    spec = parse_spec(SEED)
    tx = PoolerSpec(pool_mode="transaction", default_pool_size=20, max_client_conn=200)
    p = plan(spec, 10, tx)
    assert p.max_safe_replicas == 13
    assert p.max_safe_replicas_during_rollout == 10
    assert p.recommendations[0].text.startswith("10 replicas fit the poolers")
    session = PoolerSpec(pool_mode="session", default_pool_size=20, max_client_conn=200)
    s = plan(spec, 10, session)
    # Each replica keeps 5 clients (poolSize) and opens up to 15: the 20 server connections run 1 replica
    # without waiting; 3 replicas' 15 kept clients leave 5 for the others to take turns on; 4 replicas'
    # 20 kept clients hold all 20 while the others wait until query_wait_timeout (they fail).
    assert (s.max_replicas_without_waiting, s.max_safe_replicas) == (1, 3)
    assert s.max_safe_replicas_during_rollout == 2  # 2 + 1 surge pod keep 15; 3 + 1 keep 20
    assert "fits without waiting up to 1 replica, waits beyond" in s.notes[0]
    assert (
        "fails beyond 3 (the pools of 4 replicas keep 20 clients open for good, enough to hold all the"
        " pooler's 20 server connections: the other clients wait until query_wait_timeout"
    ) in s.notes[0]
    needed = {k: v for r in s.recommendations for k, v in r.numbers.items()}  # 13 pods keep 65, open 195
    assert needed["serverConnectionsNeeded"] == 66
    assert needed["serverConnectionsWithoutWaiting"] == 195
    small = PoolerSpec(pool_mode="transaction", default_pool_size=80, reserve_pool_size=30, max_client_conn=100)
    numbers = {k: v for r in plan(spec, 10, small).recommendations for k, v in r.numbers.items()}
    assert numbers == {"maxClientConn": 195, "serverConnectionsPerInstance": 100}


def test_the_verdict_states_the_rollout_budget_when_the_spec_has_one() -> None:
    spec = parse_spec({**SEED, "rollout": {"maxSurge": 2}})
    verdict = overall_verdict(spec, [])
    # The benchmark's usable is 99 (its monitor holds one): 5 + 2 pods × 15 = 105 > 99; 4 + 2: 90.
    assert "During a rolling update (maxSurge 2) at most 4 replicas fit" in verdict.summary
    assert "rolling update" not in overall_verdict(parse_spec(SEED), []).summary


@pytest.mark.parametrize("surge", ["25", "-5%", "1001%", 5000, "x%"])
def test_a_bad_max_surge_is_named_by_path(surge: object) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "rollout": {"maxSurge": surge}})
    assert any(path.startswith("spec.rollout.maxSurge") for path, _ in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("surge", "message"),
    [
        (1.5, "must be a whole count of pods (0 to 1000) or a percentage like '25%', not 1.5"),
        (True, "must be a whole count of pods (0 to 1000) or a percentage like '25%', not true"),
        ("2000%", "must be a percentage from '0%' to '1000%', not '2000%'"),
        (-1, "must be a count between 0 and 1000 pods, not -1"),
    ],
)
def test_a_bad_max_surge_is_one_readable_problem_at_its_own_path(surge: object, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "rollout": {"maxSurge": surge}})
    assert err.value.problems == [("spec.rollout.maxSurge", message)]


def test_a_max_surge_of_a_thousand_percent_is_accepted_and_rounds_up() -> None:
    spec = parse_spec({**SEED, "rollout": {"maxSurge": "1000%"}})
    assert spec.rollout is not None
    assert surge_pods(3, spec.rollout.max_surge) == 30


def write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_plan_json_has_the_documented_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = make_doc(steps=[5], workload={"threads": 15}, rollout={"maxSurge": "25%"})
    assert cli.main(["plan", write(tmp_path, doc), "--json", "--target-replicas", "10"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {
        "perReplicaPeak",
        "perReplicaIdle",
        "usableConnections",
        "maxSafeReplicas",
        "maxSafeReplicasDuringRollout",
        "recommendations",
    } <= set(data)
    assert (data["maxSafeReplicas"], data["maxSafeReplicasDuringRollout"]) == (6, 4)
    assert data["recommendations"][0]["maxConnectionsPerReplica"] == 7


def test_plan_with_variants_plans_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = make_doc(
        steps=[5],
        workload={"threads": 15},
        variants=[{"name": "direct"}, {"name": "tx", "pooler": {"poolMode": "transaction"}}],
    )
    assert cli.main(["plan", write(tmp_path, doc), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["direct", "tx"]
    assert data["variants"][1]["maxSafeReplicas"] == 6  # 100 clients ÷ 15


def test_plan_refuses_a_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", write(tmp_path, make_doc(steps=[1])), "--target-replicas", "0"]) == 2
    assert "--target-replicas: must be between 1 and 100000" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("provider", "max_connections", "app", "admin"),
    [
        # RDS: a normal role loses superuser_reserved_connections 3 + rds.rds_superuser_reserved_connections 2; the
        # master user (rds_superuser, not a superuser) may take the 2 but not the 3.
        ({"name": "rds", "memoryGiB": 1}, 112, 107, 109),  # 2^30 // 9531392; AWS then subtracts its OS reserve
        ({"name": "rds", "memoryGiB": 8}, 901, 896, 898),
        ({"name": "rds", "memoryGiB": 2048}, 5000, 4995, 4997),  # LEAST(…, 5000)
        # Azure: 15 reserved from every user role, azure_pg_admin included (Microsoft's "max user connections" column).
        ({"name": "azure", "memoryGiB": 2}, 50, 35, 35),  # Burstable B1ms
        ({"name": "azure", "memoryGiB": 8}, 859, 844, 844),  # General Purpose D2s_v3
        ({"name": "azure", "memoryGiB": 64}, 5000, 4985, 4985),
        # Cloud SQL: cloudsqlsuperuser is not a superuser, so both lose superuser_reserved_connections 3.
        ({"name": "cloudsql", "memoryGiB": 0.6}, 25, 22, 22),  # db-f1-micro
        ({"name": "cloudsql", "memoryGiB": 1.7}, 50, 47, 47),  # db-g1-small
        ({"name": "cloudsql", "memoryGiB": 3.75}, 100, 97, 97),
    ],
)
def test_a_provider_fills_the_limits_and_each_roles_usable_by_its_rule(
    provider: dict[str, Any], max_connections: int, app: int, admin: int
) -> None:
    for role, usable in (("app", app), ("superuser", admin)):
        spec = parse_spec({**SEED, "postgres": {"provider": provider}, "workload": {"threads": 15, "role": role}})
        assert spec.postgres.max_connections == max_connections
        p = plan(spec)
        assert p.usable_connections == usable, role
        assert usable_connections(spec) == usable - 1, role  # the benchmark's monitor holds one more
        assert p.max_safe_replicas == usable // 15


@pytest.mark.parametrize(
    ("memory", "max_connections"),
    [
        (3.75, 100),
        (5.99, 100),
        (6, 200),
        (7.49, 200),
        (7.5, 400),
        (14.99, 400),
        (15, 500),
        (29.9, 500),
        (30, 600),
        (59.9, 600),
        (60, 800),
        (119.9, 800),
        (120, 1000),
        (624, 1000),
    ],
)
def test_cloud_sql_bands_start_at_their_edges(memory: float, max_connections: int) -> None:
    """Google's flags page: "from 7.5 GB" 400 and so on: an edge belongs to the band above it."""
    spec = parse_spec({**SEED, "postgres": {"provider": {"name": "cloudsql", "memoryGiB": memory}}})
    assert spec.postgres.max_connections == max_connections


@pytest.mark.parametrize(
    ("provider", "words"),
    [
        ({"name": "cloudsql", "memoryGiB": 2.5}, "no machine has 2.5 GB"),
        ({"name": "azure", "memoryGiB": 3}, "no published default for 3 GiB"),
        ({"name": "rds", "memoryGiB": 0.05}, "max_connections 5, below RDS's minimum 6"),
    ],
)
def test_a_memory_without_a_published_default_is_refused(provider: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "postgres": {"provider": provider}})
    assert err.value.problems[0][0] == "spec.postgres.provider"
    assert words in err.value.problems[0][1]


def test_every_provider_table_names_its_source_and_date() -> None:
    for name, rule in PROVIDER_RULES.items():
        assert rule.source.startswith("https://"), name
        assert rule.checked == "2026-12-01", name
        text = parse_spec({**SEED, "postgres": {"provider": {"name": name, "memoryGiB": 8}}}).postgres.provider
        assert text is not None
        assert rule.source in text.source()
        assert rule.checked in text.source()


def test_a_provider_case_in_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An app with 4 gunicorn workers × QueuePool (5 + 10) on an RDS instance with 8 GiB, rolling 25%.
    doc = make_doc(
        steps=[2],
        postgres={"provider": {"name": "rds", "memoryGiB": 8}},
        rollout={"maxSurge": "25%"},
        workload={"threads": 15, "processes": 4, "role": "app"},
    )
    assert cli.main(["plan", write(tmp_path, doc), "--json", "--target-replicas", "20"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["provider"].startswith("RDS: LEAST(DBInstanceClassMemory/9531392, 5000)")
    assert data["perReplicaPeak"] == 60
    assert data["perReplicaIdle"] == 20
    assert data["usableConnections"] == 896  # 901 − 5 reserved
    assert data["maxSafeReplicas"] == 14  # 896 // 60
    assert data["maxSafeReplicasDuringRollout"] == 11  # 11 + 3 surge pods = 14 × 60 = 840 ≤ 896; 12 + 3 = 900
    numbers = {k: v for r in data["recommendations"] for k, v in r.items() if k != "text"}
    assert numbers["maxConnectionsPerReplica"] == 35  # 896 ÷ (20 + 5 surge pods)
    assert numbers["maxConnectionsPerProcess"] == 8
    assert (numbers["poolSize"], numbers["maxOverflow"]) == (5, 3)
    assert numbers["maxConnections"] == 25 * 60 + 5


def test_provider_and_limits_together_are_refused() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "postgres": {"maxConnections": 50, "provider": {"name": "rds", "memoryGiB": 1}}})
    assert "maxConnections cannot be given with provider" in err.value.message()


def test_with_worker_processes_the_processes_cannot_each_get_a_connection() -> None:
    # 8 worker processes × 1 thread: 8 connections per replica. 20 replicas + 5 surge pods share 100: 4 per pod,
    # so the pods could each hold some, but not each of their 8 processes (each its own pool) one.
    spec = parse_spec({**SEED, "workload": {"threads": 1, "processes": 8}})
    p = plan(spec, target_replicas=20)
    pool = p.recommendations[0]
    assert pool.text.startswith(
        "Pool: 200 worker processes (25 pods during a rollout × 8) cannot each hold even one connection in 100 usable"
    )
    assert pool.numbers == {"maxConnectionsPerReplica": 4, "maxConnectionsPerProcess": 0}
    assert "25 pods cannot" not in " ".join(r.text for r in p.recommendations)


@pytest.mark.parametrize(
    ("postgres", "target", "needed", "allowed", "where"),
    [
        # Azure: 500 pods (400 + 25% surge) × 15 + 15 reserved = 7515, Azure allows at most 5000.
        ({"provider": {"name": "azure", "memoryGiB": 64}}, 400, 7515, 5000, "Azure Flexible Server allows"),
        # Plain PostgreSQL: 25000 pods × 15 = 375000 > 262143, PostgreSQL's own maximum.
        ({}, 20000, 375000, 262143, "PostgreSQL allows"),
        # RDS allows 6–262143: 20000 replicas' pods need 375000 + 3 for the master user.
        ({"provider": {"name": "rds", "memoryGiB": 8}}, 20000, 375003, 262143, "RDS allows"),
    ],
)
def test_no_server_setting_is_recommended_beyond_what_the_server_allows(
    postgres: dict[str, Any], target: int, needed: int, allowed: int, where: str
) -> None:
    p = plan(parse_spec({**SEED, "postgres": postgres}), target_replicas=target)
    server = next(r for r in p.recommendations if r.text.startswith("Server:"))
    assert server.text.startswith("Server: no server setting can hold this")
    assert f"{where} at most max_connections {allowed}: use a pooler or fewer pods" in server.text
    assert server.numbers == {"maxConnectionsNeeded": needed, "maxConnectionsAllowed": allowed}


def test_a_server_setting_within_the_providers_range_is_recommended() -> None:
    # Azure 8 GiB: 859, 15 reserved. 60 replicas + 15 surge pods × 15 = 1125 + 15 = 1140 ≤ 5000.
    p = plan(parse_spec({**SEED, "postgres": {"provider": {"name": "azure", "memoryGiB": 8}}}), target_replicas=60)
    server = next(r for r in p.recommendations if r.text.startswith("Server:"))
    assert server.numbers == {"maxConnections": 1140}


def test_plan_is_production_arithmetic_and_never_refused_for_the_monitor_slot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # max_connections 4, 3 reserved from a normal role: production has 1 slot; the benchmark's monitor would take it.
    doc = make_doc(
        steps=[1],
        postgres={"maxConnections": 4, "superuserReservedConnections": 3},
        workload={"threads": 1, "role": "app", "holdSeconds": 900},
        stepTimeoutSeconds=60,
    )
    path = write(tmp_path, doc)
    assert cli.main(["plan", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["usableConnections"], data["maxSafeReplicas"]) == (1, 1)
    assert cli.main(["validate", path]) == 2  # a benchmark of it could never measure: refused, by path
    err = capsys.readouterr().err
    assert (
        "spec.postgres.maxConnections: maxConnections 4 leaves no connection for the workload (3 reserved for"
        " superusers, 1 for the benchmark's monitor)" in err
    )
    assert "spec.workload.holdSeconds" in err


def test_plan_names_each_roles_reserved_slots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for role, line in (
        ("app", "usable: 896 of max_connections 901 (5 reserved: 3 for superusers + 2 for rds_superuser)"),
        ("superuser", "usable: 898 of max_connections 901 (3 reserved on RDS, whose rds_superuser is not a superuser)"),
    ):
        doc = make_doc(
            steps=[1], postgres={"provider": {"name": "rds", "memoryGiB": 8}}, workload={"threads": 15, "role": role}
        )
        assert cli.main(["plan", write(tmp_path, doc)]) == 0
        assert line in capsys.readouterr().out


@pytest.mark.parametrize(
    ("provider", "role", "usable"),
    [
        ({"name": "rds", "memoryGiB": 1}, "superuser", 108),
        ({"name": "rds", "memoryGiB": 1}, "app", 106),
        ({"name": "azure", "memoryGiB": 2}, "superuser", 34),
        ({"name": "cloudsql", "memoryGiB": 0.6}, "superuser", 21),
    ],
)
def test_the_verdict_counts_each_roles_slots_by_the_providers_rule(
    provider: dict[str, Any], role: str, usable: int
) -> None:
    spec = parse_spec({"steps": [100], "postgres": {"provider": provider}, "workload": {"threads": 1, "role": role}})
    failed = StepResult(replicas=100, outcome="Failed", reason="refused")
    verdict = overall_verdict(spec, [failed])
    reserved = spec.postgres.max_connections - usable - 1
    assert (
        f"{usable} usable ({spec.postgres.max_connections} max_connections − {reserved} reserved − 1 monitor)"
        in verdict.reason
    )
    assert f"the server allows {usable}, so at most {usable} replicas fit" in verdict.summary


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["rds", "azure", "cloudsql"]),
    memory=st.one_of(
        st.sampled_from([0.6, 1.7, 2, 4, 8, 16, 32, 48, 64, 3.75, 6, 7.5, 15, 30, 60, 120]),
        st.floats(min_value=0.06, max_value=4096),
    ),
    role=st.sampled_from(["app", "superuser"]),
    threads=st.integers(1, 60),
    processes=st.integers(1, 8),
    target=st.integers(1, 30000),
)
def test_plan_and_prediction_share_one_rule_and_recommend_only_what_the_server_allows(
    name: str, memory: float, role: str, threads: int, processes: int, target: int
) -> None:
    raw = {
        **SEED,
        "postgres": {"provider": {"name": name, "memoryGiB": memory}},
        "workload": {"threads": threads, "processes": processes, "role": role},
    }
    try:
        spec = parse_spec(raw)
    except SpecError as err:  # a memory without a published default: refused by path, never guessed
        assert all(path.startswith("spec.postgres") for path, _ in err.problems), err.problems
        return
    pg = spec.postgres
    rule = PROVIDER_RULES[name]
    assert rule.min_connections <= pg.max_connections <= rule.max_connections
    p = plan(spec, target_replicas=target)
    assert p.usable_connections == pg.max_connections - pg.reserved_for(spec.workload.role)
    assert usable_connections(spec) == p.usable_connections - 1  # the benchmark's monitor, nothing else
    assert pg.reserved_for("app") >= pg.reserved_for("superuser") >= rule.superuser_reserved  # nobody is superuser
    numbers = {k: v for r in p.recommendations for k, v in r.numbers.items()}
    if "maxConnections" in numbers:
        assert rule.min_connections <= numbers["maxConnections"] <= rule.max_connections
    if "maxConnectionsNeeded" in numbers:
        assert numbers["maxConnectionsNeeded"] > numbers["maxConnectionsAllowed"] == rule.max_connections
    if numbers.get("maxConnectionsPerReplica"):
        pods = target + surge_pods(target, p.max_surge)
        assert numbers["maxConnectionsPerReplica"] * pods <= p.usable_connections
