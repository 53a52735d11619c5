"""`poolbench plan`: the connection budget without running anything (pure arithmetic and the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from poolbench import cli
from poolbench.core.plan import plan
from poolbench.core.spec import PoolerSpec, SpecError, parse_spec
from poolbench.core.verdict import overall_verdict, rollout_safe, surge_pods
from tests.conftest import make_doc

SEED = {"steps": [5, 10], "workload": {"threads": 15}}


@pytest.mark.parametrize(("replicas", "surge", "pods"), [
    (4, "25%", 1), (5, "25%", 2), (8, "25%", 2), (10, "25%", 3), (10, 1, 1), (10, "0%", 0), (3, "100%", 3),
])
def test_surge_is_rounded_up_like_the_deployment_controller(replicas: int, surge: int | str, pods: int) -> None:
    assert surge_pods(replicas, surge) == pods


def test_the_seed_budget_at_rest_and_during_a_rollout() -> None:
    p = plan(parse_spec({**SEED, "rollout": {"maxSurge": "25%"}}))
    assert (p.per_replica_peak, p.per_replica_idle, p.usable_connections) == (15, 5, 100)
    assert p.max_safe_replicas == 6  # 6 × 15 = 90 ≤ 100
    # 6 + 2 surge pods need 120; 5 + 2 need 105; 4 + 1 need 75.
    assert p.max_safe_replicas_during_rollout == 4
    assert rollout_safe(15, 100, 1) == 5 and rollout_safe(15, 100, 0) == 6


def test_without_a_rollout_the_deployment_default_is_assumed() -> None:
    assert plan(parse_spec(SEED)).max_surge == "25%"


def test_a_normal_role_loses_the_reserved_slots_and_the_plan_has_no_monitor() -> None:
    p = plan(parse_spec({**SEED, "workload": {"threads": 15, "role": "app"},
                         "postgres": {"maxConnections": 100, "superuserReservedConnections": 3}}))
    assert p.usable_connections == 97  # the benchmark's own usable is 96: it also holds a monitor
    assert parse_spec(SEED | {"workload": {"threads": 15, "role": "app"}}).usable_connections() == 96


def test_what_would_make_ten_replicas_fit() -> None:
    p = plan(parse_spec({**SEED, "rollout": {"maxSurge": "25%"}}), target_replicas=10)
    numbers = {k: v for r in p.recommendations for k, v in r.to_json().items() if k != "text"}
    # 10 replicas + 3 surge pods = 13 pods share 100 connections: 7 each.
    assert numbers["maxConnectionsPerReplica"] == 7
    assert numbers["poolSize"] == 5 and numbers["maxOverflow"] == 2
    assert numbers["maxConnections"] == 13 * 15  # or a server that holds them all
    assert numbers["poolerClientConnections"] == 195
    assert all(r.text for r in p.recommendations)


def test_a_target_that_already_fits_says_so() -> None:
    p = plan(parse_spec(SEED), target_replicas=4)
    assert len(p.recommendations) == 1 and p.recommendations[0].text.startswith("4 replicas fit: 5 pods")


def test_pooled_plans_count_clients_at_the_pooler() -> None:
    spec = parse_spec(SEED)
    tx = PoolerSpec(pool_mode="transaction", default_pool_size=20, max_client_conn=200)
    p = plan(spec, 10, tx)
    assert p.max_safe_replicas == 13 and p.max_safe_replicas_during_rollout == 10  # 200 clients
    assert p.recommendations[0].text.startswith("10 replicas fit the poolers")
    session = PoolerSpec(pool_mode="session", default_pool_size=20, max_client_conn=200)
    s = plan(spec, 10, session)
    # Each replica keeps 5 clients (poolSize) and opens up to 15: the 20 server connections run 1 replica
    # without waiting; 4 replicas' 20 kept clients still get one each; 5 replicas' 25 do not (they fail).
    assert (s.max_replicas_without_waiting, s.max_safe_replicas) == (1, 4)
    assert s.max_safe_replicas_during_rollout == 3  # 3 + 1 surge pod keep 20
    assert "fits without waiting up to 1 replica, waits beyond" in s.notes[0]
    assert "fails beyond 4 (the pools of 5 replicas keep 25 clients open for good" in s.notes[0]
    needed = {k: v for r in s.recommendations for k, v in r.numbers.items()}  # 13 pods keep 65, open 195
    assert needed["serverConnectionsNeeded"] == 65 and needed["serverConnectionsWithoutWaiting"] == 195
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


def write(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_plan_json_has_the_documented_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = make_doc(steps=[5], workload={"threads": 15}, rollout={"maxSurge": "25%"})
    assert cli.main(["plan", write(tmp_path, doc), "--json", "--target-replicas", "10"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"perReplicaPeak", "perReplicaIdle", "usableConnections", "maxSafeReplicas",
            "maxSafeReplicasDuringRollout", "recommendations"} <= set(data)
    assert (data["maxSafeReplicas"], data["maxSafeReplicasDuringRollout"]) == (6, 4)
    assert data["recommendations"][0]["maxConnectionsPerReplica"] == 7


def test_plan_with_variants_plans_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = make_doc(steps=[5], workload={"threads": 15},
                   variants=[{"name": "direct"}, {"name": "tx", "pooler": {"poolMode": "transaction"}}])
    assert cli.main(["plan", write(tmp_path, doc), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["direct", "tx"]
    assert data["variants"][1]["maxSafeReplicas"] == 6  # 100 clients ÷ 15


def test_plan_refuses_a_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", write(tmp_path, make_doc(steps=[1])), "--target-replicas", "0"]) == 2
    assert "--target-replicas: must be between 1 and 100000" in capsys.readouterr().err


@pytest.mark.parametrize(("provider", "max_connections", "reserved"), [
    ({"name": "rds", "memoryGiB": 1}, 112, 5),  # 2^30 // 9531392; AWS then subtracts its OS reserve
    ({"name": "rds", "memoryGiB": 8}, 901, 5),
    ({"name": "rds", "memoryGiB": 2048}, 5000, 5),  # LEAST(…, 5000)
    ({"name": "azure", "memoryGiB": 2}, 50, 15),  # Burstable B1ms
    ({"name": "azure", "memoryGiB": 8}, 859, 15),  # General Purpose D2s_v3
    ({"name": "azure", "memoryGiB": 64}, 5000, 15),
    ({"name": "cloudsql", "memoryGiB": 0.6}, 25, 3),  # db-f1-micro
    ({"name": "cloudsql", "memoryGiB": 3.75}, 100, 3),
])
def test_a_provider_fills_the_limits_by_its_published_defaults(provider: dict, max_connections: int,
                                                               reserved: int) -> None:
    spec = parse_spec({**SEED, "postgres": {"provider": provider}, "workload": {"threads": 15, "role": "app"}})
    assert (spec.postgres.max_connections, spec.postgres.superuser_reserved_connections) == (max_connections, reserved)
    p = plan(spec)
    assert p.usable_connections == max_connections - reserved
    assert p.max_safe_replicas == (max_connections - reserved) // 15


def test_a_provider_case_in_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An app with 4 gunicorn workers × QueuePool (5 + 10) on an RDS instance with 8 GiB, rolling 25%.
    doc = make_doc(steps=[2], postgres={"provider": {"name": "rds", "memoryGiB": 8}}, rollout={"maxSurge": "25%"},
                   workload={"threads": 15, "processes": 4, "role": "app"})
    assert cli.main(["plan", write(tmp_path, doc), "--json", "--target-replicas", "20"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["provider"].startswith("RDS: LEAST(DBInstanceClassMemory/9531392, 5000)")
    assert data["perReplicaPeak"] == 60 and data["perReplicaIdle"] == 20  # 4 processes × (15, 5)
    assert data["usableConnections"] == 896  # 901 − 5 reserved
    assert data["maxSafeReplicas"] == 14  # 896 // 60
    assert data["maxSafeReplicasDuringRollout"] == 11  # 11 + 3 surge pods = 14 × 60 = 840 ≤ 896; 12 + 3 = 900
    numbers = {k: v for r in data["recommendations"] for k, v in r.items() if k != "text"}
    assert numbers["maxConnectionsPerReplica"] == 35  # 896 ÷ (20 + 5 surge pods)
    assert numbers["maxConnectionsPerProcess"] == 8 and (numbers["poolSize"], numbers["maxOverflow"]) == (5, 3)
    assert numbers["maxConnections"] == 25 * 60 + 5


def test_provider_and_limits_together_are_refused() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "postgres": {"maxConnections": 50, "provider": {"name": "rds", "memoryGiB": 1}}})
    assert "maxConnections cannot be given with provider" in err.value.message()
    with pytest.raises(SpecError) as err:
        parse_spec({**SEED, "postgres": {"provider": {"name": "azure", "memoryGiB": 3}}})
    assert err.value.problems[0][0] == "spec.postgres.provider"
    assert "no published default for 3 GiB" in err.value.problems[0][1]
