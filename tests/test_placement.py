"""Random placement of connections on pooler instances (as a Kubernetes Service places them): the one
rule behind the pooled prediction, verdict and plan, against answers computed exactly here."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench.core.benchmark import planned_step
from poolbench.core.budget import (
    PLACEMENT_RISK,
    largest,
    overflow_risk,
    placement_overflows,
    pooled_limits,
    pooled_replica_limits,
    pooled_safe_replicas,
    predict,
    session_starves,
    usable_connections,
)
from poolbench.core.contracts.replica_env import (
    PoolMode,
    WorkloadConfig,
    WorkloadEnvError,
    parse_pooler_hosts,
    render_pooler_hosts,
)
from poolbench.core.plan import plan
from poolbench.core.results import PoolerStepResult, StepResult
from poolbench.core.spec import PoolerSpec, parse_spec
from poolbench.core.steploop import StepStarted
from poolbench.core.verdict import pooled_verdict
from poolbench.core.words import replicas_fit

SEED = {"steps": [1], "workload": {"threads": 15, "engine": {"poolSize": 5, "maxOverflow": 10}}}


def passed(replicas: int) -> StepResult:
    return StepResult(replicas=replicas, outcome="Passed", pooler=PoolerStepResult())


def exact_risk(clients: int, instances: int, capacity: int) -> Fraction:
    """instances × P(Binomial(clients, 1/instances) > capacity), in exact rationals."""
    p = Fraction(1, instances)
    tail = sum(
        Fraction(math.comb(clients, k)) * p**k * (1 - p) ** (clients - k) for k in range(capacity + 1, clients + 1)
    )
    return min(Fraction(1), Fraction(instances) * tail)


def test_one_instance_is_exact() -> None:
    for capacity in (1, 4, 99, 100_000):
        assert overflow_risk(capacity, 1, capacity) == 0.0
        assert overflow_risk(capacity + 1, 1, capacity) == 1.0
        assert not placement_overflows(capacity, 1, capacity)
        assert placement_overflows(capacity + 1, 1, capacity)


@pytest.mark.parametrize(
    ("clients", "instances", "capacity"),
    [
        (6, 3, 4),
        (20, 2, 15),
        (40, 2, 30),
        (60, 2, 45),
        (100, 3, 60),
        (200, 4, 90),
        (10, 2, 9),
        (30, 2, 25),
    ],
)
def test_the_risk_is_the_union_bound_of_binomial_tails(clients: int, instances: int, capacity: int) -> None:
    assert overflow_risk(clients, instances, capacity) == pytest.approx(
        float(exact_risk(clients, instances, capacity)), rel=1e-9
    )


def test_known_boundaries() -> None:
    # Each connection anywhere: at most c on one instance is certain when C ≤ c; C > n × c cannot fit.
    assert overflow_risk(25, 2, 25) == 0.0
    assert overflow_risk(51, 2, 25) == 1.0
    # 2 × P(Binomial(30, 1/2) > 25) = 2 × 31931 / 2^30: about 6e-5, not below one in a million.
    assert exact_risk(30, 2, 25) == Fraction(2 * 31931, 2**30)
    assert placement_overflows(30, 2, 25)
    # The largest safe count for 2 instances of 30: exactly where the exact risk crosses 1e-6.
    threshold = Fraction(PLACEMENT_RISK)
    expected = max(c for c in range(0, 61) if exact_risk(c, 2, 30) < threshold)
    assert largest(lambda c: not placement_overflows(c, 2, 30), 60) == expected
    assert 30 < expected < 60  # strictly between "fits on one" and "fits only when perfectly even"


def test_more_clients_or_more_instances_never_lower_the_risk() -> None:
    for instances in (2, 3, 5):
        risks = [overflow_risk(c, instances, 40) for c in range(0, instances * 40 + 2)]
        assert risks == sorted(risks)
        assert risks[40] == 0.0
        assert risks[-1] == 1.0
    # A higher capacity never raises it.
    by_capacity = [overflow_risk(300, 4, c) for c in range(60, 301)]
    assert by_capacity == sorted(by_capacity, reverse=True)


def test_huge_counts_by_the_normal_tail() -> None:
    # 500 000 connections over 2 instances: mean 250 000, σ ≈ 354. At mean + 4σ one instance overflows
    # with chance ≈ 2 × 3.2e-5; at mean + 6σ ≈ 2 × 1e-9: well on either side of one in a million.
    clients, sigma = 500_000, math.sqrt(500_000) / 2
    assert placement_overflows(clients, 2, 250_000 + round(4 * sigma))
    assert not placement_overflows(clients, 2, 250_000 + round(6 * sigma))
    pooler = PoolerSpec(pool_mode="transaction", max_client_conn=100_000, default_pool_size=10, replicas=5)
    free, safe = pooled_limits(1, 1, pooler, 10**6, 100_000)
    assert free < 50 < safe  # beyond 5 × 10 server connections clients queue for a transaction's end
    assert not placement_overflows(safe, 5, 100_000)
    assert placement_overflows(safe + 1, 5, 100_000)
    # Short of the perfect spread (500 000) by 4 to 6 σ of one instance's count (σ² = C × 1/5 × 4/5).
    sigma = math.sqrt(safe * 0.16)
    assert 5 * (100_000 - 6 * sigma) < safe < 5 * (100_000 - 4 * sigma)


def session_opening(free: int, safe: int, instances: int) -> str:
    """How the verdict opens session mode's regimes for these limits."""
    if free == 0:
        return "waits from 1 replica" if safe > 0 else ("fails" if instances == 1 else "may fail") + " from 1 replica"
    return f"fits without waiting up to {free} {'replica' if free == 1 else 'replicas'}"


@pytest.mark.parametrize(
    "pooler",
    [
        PoolerSpec(pool_mode="transaction", default_pool_size=20, max_client_conn=200),
        PoolerSpec(pool_mode="transaction", default_pool_size=10, max_client_conn=60, replicas=3),
        PoolerSpec(pool_mode="session", default_pool_size=20, max_client_conn=200),
        PoolerSpec(pool_mode="session", default_pool_size=20, reserve_pool_size=5, max_client_conn=200, replicas=2),
        PoolerSpec(pool_mode="session", default_pool_size=8, max_client_conn=40, replicas=4),
        PoolerSpec(pool_mode="transaction", default_pool_size=60, max_client_conn=500, replicas=2),  # 120 > 99 usable
    ],
)
def test_the_prediction_the_verdict_and_plan_use_one_rule(pooler: PoolerSpec) -> None:
    spec = parse_spec(SEED)  # 15 clients per replica at the peak, 5 kept
    free, safe = pooled_replica_limits(spec, pooler)
    assert safe == pooled_safe_replicas(spec, pooler)
    for replicas in range(0, safe + 20):
        p = predict(spec, replicas, pooler)
        assert p.fits == (replicas <= safe), replicas
        assert (p.check.outcome == "fits") == (replicas <= free), replicas
        assert p.peak <= p.usable  # the server refuses the poolers' logins beyond its usable slots
    verdict = pooled_verdict(spec, [passed(1)], pooler)
    if pooler.pool_mode == "session":
        opening = session_opening(free, safe, pooler.replicas)
        assert opening in verdict.reason
        assert opening in verdict.summary
    else:
        assert f"at most {replicas_fit(safe)} the poolers" in verdict.summary
    # plan: the same rule with production numbers; its recommendation for a target agrees with its
    # own max safe during a rollout.
    for target in range(1, 25):
        budget = plan(spec, target, pooler)
        fits = budget.recommendations[0].text.startswith(f"{replicas_fit(target)} the poolers")
        assert fits == (target <= budget.max_safe_replicas_during_rollout), (target, budget.recommendations)
        assert fits == all(f"{replicas_fit(target)} the poolers" in r.text for r in budget.recommendations)


def test_the_old_contradiction_is_not_predicted_safe() -> None:
    # One replica opens 6 clients; 3 instances take 4 each. The total (12) fits, but at random one
    # instance gets 5 or 6 of them with chance 3 × 13/729 ≈ 5 %: not safe, and the verdict says why.
    spec = parse_spec({"steps": [1], "workload": {"threads": 6, "engine": {"poolSize": 6, "maxOverflow": 0}}})
    pooler = PoolerSpec(pool_mode="transaction", default_pool_size=4, max_client_conn=5, replicas=3)
    assert overflow_risk(6, 3, 4) == pytest.approx(3 * 13 / 729)
    assert pooled_safe_replicas(spec, pooler) == 0
    assert not predict(spec, 1, pooler).fits
    summary = pooled_verdict(spec, [passed(1)], pooler).summary
    assert "at most 0 replicas fit the poolers" in summary
    assert (
        "connections land on the 3 PgBouncer instances at random, as through a Service: counted safe when the"
        " chance that one instance gets more than its 4 clients is below one in a million"
    ) in summary


def test_session_mode_waits_before_it_fails() -> None:
    # poolSize 1 + maxOverflow 2: 3 clients at the peak, 1 kept, per replica; 4 server connections.
    spec = parse_spec(
        {
            "steps": [1],
            "workload": {"threads": 3, "engine": {"poolSize": 1, "maxOverflow": 2}},
            "postgres": {"maxConnections": 40},
        }
    )
    pooler = PoolerSpec(pool_mode="session", default_pool_size=4, query_wait_timeout_seconds=3)
    assert usable_connections(spec) == 39
    # 3 replicas keep 3 clients: the others take turns on the fourth server connection. 4 keep 4: all
    # of them, and the 8 others wait until query_wait_timeout.
    assert pooled_replica_limits(spec, pooler) == (1, 3)
    assert [predict(spec, r, pooler).check.outcome for r in (1, 2, 3, 4, 5)] == [
        "fits",
        "waits",
        "waits",
        "fails",
        "fails",
    ]
    assert predict(spec, 4, pooler).check.cause == "kept"
    reason = pooled_verdict(spec, [passed(2)], pooler).reason
    assert (
        "fits without waiting up to 1 replica, waits beyond (a waiting client runs when an overflow client"
        " disconnects), fails beyond 3 (the pools of 4 replicas keep 4 clients open for good, enough to hold"
        " all the pooler's 4 server connections: the other clients wait until query_wait_timeout (3 s) and"
        " are disconnected)"
    ) in reason


def test_kept_clients_that_hold_every_server_connection_starve_the_others() -> None:
    # Session mode: the kept clients never disconnect, so when they hold all of an instance's server
    # connections a client waiting there never gets one; with fewer, the waiting take turns on the rest.
    assert session_starves(clients=3, kept=2, instances=1, server=2)
    assert not session_starves(clients=3, kept=1, instances=1, server=2)
    assert not session_starves(clients=2, kept=2, instances=1, server=2)  # nobody waits
    assert session_starves(clients=4, kept=1, instances=1, server=1)
    assert not session_starves(clients=40, kept=0, instances=3, server=1)  # NullPool keeps none
    assert session_starves(clients=12, kept=6, instances=3, server=2)  # 6 kept fill 3 × 2 for sure
    assert not session_starves(clients=100, kept=2, instances=4, server=30)


def test_the_reserve_counts_only_when_a_client_may_wait_for_it() -> None:
    # 1 replica: 3 clients, 2 kept, on defaultPoolSize 2 + reservePoolSize 1. The reserve opens for a
    # client that waited reserve_pool_timeout (5 s): beyond the pool the third client waits, and fails
    # when query_wait_timeout ends its wait first.
    spec = parse_spec(
        {
            "steps": [1],
            "workload": {"threads": 3, "engine": {"poolSize": 2, "maxOverflow": 1}},
            "postgres": {"maxConnections": 40},
        }
    )
    for timeout, outcome in ((2, "fails"), (5, "fails"), (6, "waits"), (0, "waits")):
        pooler = PoolerSpec(
            pool_mode="session", default_pool_size=2, reserve_pool_size=1, query_wait_timeout_seconds=timeout
        )
        assert pooler.reachable_server_connections() == (2 if outcome == "fails" else 3)
        assert predict(spec, 1, pooler).check.outcome == outcome, timeout
    no_reserve_needed = PoolerSpec(
        pool_mode="session", default_pool_size=3, reserve_pool_size=1, query_wait_timeout_seconds=2
    )
    assert predict(spec, 1, no_reserve_needed).check.outcome == "fits"


def test_a_pooled_peak_never_exceeds_usable() -> None:
    spec = parse_spec({**SEED, "postgres": {"maxConnections": 30}})  # 29 usable (the monitor holds one)
    pooler = PoolerSpec(pool_mode="transaction", default_pool_size=40, max_client_conn=1000)
    usable = usable_connections(spec)
    p = predict(spec, 4, pooler)  # 60 clients; the pooler would open 40 server connections
    assert p.peak == usable < 40
    assert not p.fits
    assert p.check.cause == "server"
    assert pooled_safe_replicas(spec, pooler) == usable // 15  # up to there the clients themselves fit


def test_pooler_hosts_travel_in_one_variable() -> None:
    addresses = [("127.0.0.1", 6432), ("127.0.0.1", 6433), ("::1", 7000)]
    assert parse_pooler_hosts(render_pooler_hosts(addresses)) == tuple(addresses)
    env = {"POOLBENCH_POOLER_HOSTS": render_pooler_hosts(addresses)}
    assert WorkloadConfig.from_env(env).pooler_hosts == tuple(addresses)
    assert WorkloadConfig.from_env({}).pooler_hosts == ()
    with pytest.raises(WorkloadEnvError, match="POOLBENCH_POOLER_HOSTS is malformed: 'localhost' is not host:port"):
        WorkloadConfig.from_env({"POOLBENCH_POOLER_HOSTS": "localhost"})


@settings(max_examples=60, deadline=None)
@given(
    threads=st.integers(1, 40),
    size=st.integers(0, 20),
    overflow=st.integers(-1, 20),
    pool_class=st.sampled_from(["QueuePool", "NullPool", "StaticPool"]),
    instances=st.integers(1, 6),
    mode=st.sampled_from(["session", "transaction"]),
    pool=st.integers(1, 60),
    reserve=st.integers(0, 10),
    clients=st.integers(2, 400),
    max_connections=st.integers(20, 400),
    surge=st.sampled_from([0, 1, "25%", "100%"]),
)
def test_no_count_is_called_safe_that_the_same_arithmetic_calls_unsafe(
    threads: int,
    size: int,
    overflow: int,
    pool_class: str,
    instances: int,
    mode: PoolMode,
    pool: int,
    reserve: int,
    clients: int,
    max_connections: int,
    surge: int | str,
) -> None:
    engine: dict[str, object] = {"poolClass": pool_class}
    if pool_class == "StaticPool":  # one connection shared by threads is refused beyond one thread
        threads = 1
    if pool_class == "QueuePool":
        engine.update(poolSize=size, maxOverflow=overflow)
    spec = parse_spec(
        {
            "steps": [1],
            "postgres": {"maxConnections": max_connections},
            "rollout": {"maxSurge": surge},
            "workload": {"threads": threads, "engine": engine},
        }
    )
    pooler = PoolerSpec(
        pool_mode=mode, default_pool_size=pool, reserve_pool_size=reserve, max_client_conn=clients, replicas=instances
    )
    free, safe = pooled_replica_limits(spec, pooler)
    assert free <= safe
    for replicas in range(max(0, free - 2), safe + 4):
        p = predict(spec, replicas, pooler)
        assert p.fits == (replicas <= safe)
        assert (p.check.outcome == "fits") == (replicas <= free)
        assert p.peak <= p.usable
    if mode == "session":
        assert session_opening(free, safe, pooler.replicas) in pooled_verdict(spec, [passed(1)], pooler).summary
    for target in (1, 2, 3, 5, 8, 13, 21, 34):
        budget = plan(spec, target, pooler)
        assert budget.max_safe_replicas_during_rollout <= budget.max_safe_replicas
        fits = budget.recommendations[0].text.startswith(f"{replicas_fit(target)} the poolers")
        assert fits == (target <= budget.max_safe_replicas_during_rollout), (target, budget.recommendations)


def test_the_step_message_states_each_instances_allowance_and_the_predicted_outcome() -> None:
    # One replica × 6 clients on 3 instances of 4: the total (12) would fit, but not by the placement rule.
    spec = parse_spec(
        {
            "steps": [1],
            "workload": {"threads": 6, "engine": {"poolSize": 6, "maxOverflow": 0}},
            "variants": [{"name": "tx", "pooler": {"poolMode": "transaction", "maxClientConn": 5, "replicas": 3}}],
        }
    )
    variant = spec.effective_variants()[0]
    planned = planned_step(spec, variant, 0, 1, 1, 0)
    message = StepStarted(planned, 1).message
    assert "predicted 6 clients, 4 allowed at each of 3 instances: fails;" in message
    assert "12" not in message  # never the total, which reads as if every instance could take any client
