"""The connection budget without running anything (``poolbench plan``): pure arithmetic.

Production arithmetic: no benchmark monitor holds a slot, so the usable connections are
``max_connections`` minus the slots reserved from the app's role. (A benchmark's verdict keeps
subtracting its own monitor, and says so.) A rolling update runs the old and the new pods at once:
up to ``replicas + maxSurge`` pods, a percentage rounded up as the Deployment controller does, so
the budget during a rollout is smaller than at rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .budget import (
    capacity_needed,
    client_capacity,
    max_connections_for,
    per_replica_idle,
    per_replica_peak,
    placement_overflows,
    pooled_check,
    pooled_limits,
    production_usable,
    rollout_safe,
    server_backends,
    server_capacity,
    server_needed,
    session_starves,
    surge_pods,
)
from .spec import DEFAULT_MAX_SURGE, PoolBenchmarkSpec, PoolerSpec
from .words import counted, placement_words, replicas_fit, session_words


@dataclass(frozen=True)
class Recommendation:
    text: str
    numbers: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, **self.numbers}


@dataclass(frozen=True)
class Plan:
    per_replica_peak: int
    per_replica_idle: int
    usable_connections: int
    max_safe_replicas: int
    max_safe_replicas_during_rollout: int
    max_surge: int | str
    pooler: PoolerSpec | None = None
    target_replicas: int | None = None
    recommendations: list[Recommendation] = field(default_factory=list)
    max_replicas_without_waiting: int | None = None  # session mode: clients wait beyond it, and run
    notes: list[str] = field(default_factory=list)  # pooled: the placement assumption, session mode's regimes

    def to_json(self) -> dict[str, Any]:
        return {
            "perReplicaPeak": self.per_replica_peak,
            "perReplicaIdle": self.per_replica_idle,
            "usableConnections": self.usable_connections,
            "maxSafeReplicas": self.max_safe_replicas,
            "maxSafeReplicasDuringRollout": self.max_safe_replicas_during_rollout,
            "maxSurge": self.max_surge,
            "targetReplicas": self.target_replicas,
            "recommendations": [r.to_json() for r in self.recommendations],
            **(
                {"maxReplicasWithoutWaiting": self.max_replicas_without_waiting}
                if self.max_replicas_without_waiting is not None
                else {}
            ),
            **({"notes": self.notes} if self.notes else {}),
        }


def plan(spec: PoolBenchmarkSpec, target_replicas: int | None = None, pooler: PoolerSpec | None = None) -> Plan:
    """The budget of ``spec`` as written (its engine, threads, role and server), and, given a target
    replica count, what would make it fit."""
    peak, idle = per_replica_peak(spec), per_replica_idle(spec)
    usable = production_usable(spec)
    max_surge = spec.rollout.max_surge if spec.rollout is not None else DEFAULT_MAX_SURGE
    if pooler is None:
        safe = rollout_safe(peak, usable)
        during = rollout_safe(peak, usable, max_surge)
    else:  # the run's rule (budget.pooled_check), with production's numbers: no monitor at the poolers either
        free, safe = pooled_limits(peak, idle, pooler, usable, pooler.max_client_conn)
        during = pooled_limits(peak, idle, pooler, usable, pooler.max_client_conn, max_surge)[1]
    result = Plan(peak, idle, usable, safe, during, max_surge, pooler, target_replicas)
    if pooler is not None:
        result.notes.extend(pooled_notes(pooler, peak, idle, usable, free, safe))
        if pooler.pool_mode == "session":
            result = replace(result, max_replicas_without_waiting=free)
    if target_replicas is not None:
        result.recommendations.extend(recommend(spec, result, target_replicas))
    return result


def recommend(spec: PoolBenchmarkSpec, budget: Plan, target: int) -> list[Recommendation]:
    """What would make ``target`` replicas fit, through a rollout too: each lever on its own."""
    pods = target + surge_pods(target, budget.max_surge)
    usable, peak = budget.usable_connections, budget.per_replica_peak
    out: list[Recommendation] = []
    if budget.pooler is not None:
        return recommend_pooled(budget.pooler, target, pods, peak, budget.per_replica_idle, usable)
    if pods * peak <= usable:
        out.append(
            Recommendation(
                f"{replicas_fit(target)}: {counted(pods, 'pod')} during a rollout × {peak} connections = {pods * peak}"
                f" of {usable} usable.",
                {"podsDuringRollout": pods, "connectionsNeeded": pods * peak},
            )
        )
        return out
    per_pod = usable // pods
    processes = spec.workload.processes
    per_process = per_pod // processes
    engine = spec.workload.engine
    split = f" ({per_process} for each of its {processes} worker processes)" if processes > 1 else ""
    if per_process >= 1 and engine.pool_class == "QueuePool":
        size = min(engine.effective_pool_size() or per_process, per_process)
        out.append(
            Recommendation(
                f"Pool: at most {per_pod} connections per replica{split} ({usable} usable ÷ {pods} pods during a"
                f" rollout), e.g. poolSize {size} and maxOverflow {per_process - size} (now"
                f" {engine.effective_pool_size()} + {engine.effective_max_overflow()}).",
                {
                    "maxConnectionsPerReplica": per_pod,
                    "maxConnectionsPerProcess": per_process,
                    "poolSize": size,
                    "maxOverflow": per_process - size,
                },
            )
        )
    elif per_process >= 1:
        out.append(
            Recommendation(
                f"Pool: at most {per_pod} connections per replica{split} ({usable} usable ÷ {pods} pods during a"
                f" rollout); with {engine.pool_class} that means at most {per_process} threads per process.",
                {"maxConnectionsPerReplica": per_pod, "maxConnectionsPerProcess": per_process},
            )
        )
    elif processes > 1:  # each process opens its own pool: the processes are what must each get one
        out.append(
            Recommendation(
                f"Pool: {pods * processes} worker processes ({pods} pods during a rollout × {processes}) cannot each"
                f" hold even one connection in {usable} usable: change the server, run fewer processes, or add a"
                " pooler.",
                {"maxConnectionsPerReplica": per_pod, "maxConnectionsPerProcess": 0},
            )
        )
    else:
        out.append(
            Recommendation(
                f"Pool: {counted(pods, 'pod')} cannot each hold even one connection in {usable} usable: "
                "change the server"
                " or add a pooler.",
                {"maxConnectionsPerReplica": 0},
            )
        )
    out.append(server_recommendation(spec, pods, peak))
    out.append(
        Recommendation(
            f"Pooler: a PgBouncer in transaction mode whose instances × (defaultPoolSize + reservePoolSize) ≤"
            f" {usable}, with max_client_conn × instances ≥ {pods * peak} (the app's connections become clients).",
            {"poolerServerConnections": usable, "poolerClientConnections": pods * peak},
        )
    )
    return out


def server_recommendation(spec: PoolBenchmarkSpec, pods: int, peak: int) -> Recommendation:
    """The max_connections that holds ``pods`` × ``peak``, or why no setting can: the provider's allowed
    range (or PostgreSQL's) bounds it."""
    pg = spec.postgres
    reserved = pg.reserved_for(spec.workload.role)
    needed = max_connections_for(spec, pods * peak)
    _, highest = pg.allowed_max_connections()
    if needed > highest:
        where = f"{pg.provider.rule.title} allows" if pg.provider is not None else "PostgreSQL allows"
        return Recommendation(
            f"Server: no server setting can hold this: {pods} pods × {peak} + {reserved} reserved = {needed}"
            f" connections, and {where} at most max_connections {highest}: use a pooler or fewer pods.",
            {"maxConnectionsNeeded": needed, "maxConnectionsAllowed": highest},
        )
    return Recommendation(
        f"Server: max_connections {needed} ({pods} pods × {peak} + {reserved} reserved from this role;"
        f" now {pg.max_connections}).",
        {"maxConnections": needed},
    )


def pooled_notes(pooler: PoolerSpec, peak: int, idle: int, usable: int, free: int, safe: int) -> list[str]:
    """The pooled budget's assumptions and regimes, in the words the run's verdict uses."""
    notes = []
    placement = placement_words(pooler, pooler.max_client_conn)
    if placement:
        notes.append(placement[0].upper() + placement[1:] + ".")
    if pooler.pool_mode == "session":
        notes.append(
            "Session mode: " + session_words(pooler, peak, idle, usable, pooler.max_client_conn, free, safe) + "."
        )
    return notes


def recommend_pooled(
    pooler: PoolerSpec, target: int, pods: int, peak: int, idle: int, usable: int
) -> list[Recommendation]:
    """What makes ``pods`` pods fit ``pooler`` by the run's rule (``pooled_check``): its verdict is the
    plan's maxSafeReplicasDuringRollout's, each lever found with the same placement rule."""
    out = []
    clients, kept = pods * peak, pods * idle
    instances, server = pooler.replicas, server_capacity(pooler)
    check = pooled_check(pooler, clients, kept, usable, pooler.max_client_conn)
    spread = "; connections are placed on the instances at random, as through a Service" if instances > 1 else ""
    if placement_overflows(clients, instances, pooler.max_client_conn):
        needed = capacity_needed(clients, instances)
        out.append(
            Recommendation(
                f"Pooler clients: {pods} pods × {peak} = {clients} clients; with {instances} instances each needs"
                f" max_client_conn ≥ {needed} (now {pooler.max_client_conn}){spread}.",
                {"maxClientConn": needed},
            )
        )
    if server_backends(pooler, clients) > usable:
        per = usable // instances
        out.append(
            Recommendation(
                f"Pooler server side: {instances} × ({pooler.default_pool_size} + {pooler.reserve_pool_size}) ="
                f" {server} server connections > {usable} usable: defaultPoolSize + reservePoolSize ≤ {per}"
                " per instance.",
                {"serverConnectionsPerInstance": per},
            )
        )
    reachable = pooler.reachable_server_connections()
    if pooler.pool_mode == "session" and session_starves(clients, kept, instances, reachable):
        needed = server_needed(clients, kept, instances)
        no_wait = capacity_needed(clients, instances)
        out.append(
            Recommendation(
                f"Session mode: a client holds a server connection while it is open and the pools' {kept} kept clients"
                f" never disconnect: with {reachable} server connections per instance they may hold them all while the"
                f" other clients wait until query_wait_timeout. Use transaction mode, or at least {needed} server"
                f" connections per instance ({no_wait} to run all {clients} clients at once){spread}.",
                {"serverConnectionsNeeded": needed * instances, "serverConnectionsWithoutWaiting": no_wait * instances},
            )
        )
    if out:
        return out
    if check.outcome == "waits" and pooler.pool_mode == "session":
        needed = capacity_needed(clients, instances)
        pool = pooler.default_pool_size  # the reserve serves only clients that waited reserve_pool_timeout
        more = (
            f"only {pool} of the {clients} clients run at once during a rollout"
            if instances == 1
            else f"at random one of the {instances} instances may get more of the {clients} clients of a rollout"
            f" than its {pool} pooled server connections"
        )
        return [
            Recommendation(
                f"{replicas_fit(target)} the poolers, with waiting: in session mode {more}; the clients beyond them"
                f" wait for an overflow client to disconnect (or reserve_pool_timeout for a reserve connection). A"
                f" defaultPoolSize of {needed} per instance would run them all at once{spread}.",
                {
                    "clients": clients,
                    "serverConnections": server,
                    "serverConnectionsWithoutWaiting": needed * instances,
                },
            )
        ]
    return [
        Recommendation(
            f"{replicas_fit(target)} the poolers: {clients} clients during a rollout of at most"
            f" {client_capacity(pooler, pooler.max_client_conn)}, and {server} server connections of {usable}"
            f" usable{spread}.",
            {"clients": clients, "serverConnections": server},
        )
    ]
