"""The connection budget without running anything (``poolbench plan``): pure arithmetic.

Production arithmetic: no benchmark monitor holds a slot, so the usable connections are
``max_connections`` minus the slots reserved from the app's role. (A benchmark's verdict keeps
subtracting its own monitor, and says so.) A rolling update runs the old and the new pods at once:
up to ``replicas + maxSurge`` pods, a percentage rounded up as the Deployment controller does, so
the budget during a rollout is smaller than at rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .spec import DEFAULT_MAX_SURGE, PoolBenchmarkSpec, PoolerSpec
from .verdict import per_replica_idle, per_replica_peak, rollout_safe, surge_pods


def production_usable(spec: PoolBenchmarkSpec) -> int:
    """Slots the app's role may use in production: max_connections minus the slots its role cannot
    take (``PostgresSpec.reserved_for``; no benchmark monitor)."""
    pg = spec.postgres
    return pg.max_connections - pg.reserved_for(spec.workload.role)


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
    else:  # the clients must fit the poolers (in session mode: their server connections); the server sees the pools
        clients = pooler.replicas * pooler.max_client_conn
        if pooler.pool_mode == "session":
            clients = min(clients, pooler.replicas * pooler.server_connections())
        safe = rollout_safe(peak, clients)
        during = rollout_safe(peak, clients, max_surge)
    result = Plan(peak, idle, usable, safe, during, max_surge, pooler, target_replicas)
    if target_replicas is not None:
        result.recommendations.extend(recommend(spec, result, target_replicas))
    return result


def recommend(spec: PoolBenchmarkSpec, budget: Plan, target: int) -> list[Recommendation]:
    """What would make ``target`` replicas fit, through a rollout too: each lever on its own."""
    pods = target + surge_pods(target, budget.max_surge)
    usable, peak = budget.usable_connections, budget.per_replica_peak
    out: list[Recommendation] = []
    if budget.pooler is not None:
        return recommend_pooled(budget.pooler, target, pods, peak, usable)
    if pods * peak <= usable:
        out.append(Recommendation(
            f"{target} replicas fit: {pods} pods during a rollout × {peak} connections = {pods * peak}"
            f" of {usable} usable.", {"podsDuringRollout": pods, "connectionsNeeded": pods * peak}))
        return out
    per_pod = usable // pods
    processes = spec.workload.processes
    per_process = per_pod // processes
    engine = spec.workload.engine
    split = f" ({per_process} for each of its {processes} worker processes)" if processes > 1 else ""
    if per_process >= 1 and engine.pool_class == "QueuePool":
        size = min(engine.effective_pool_size() or per_process, per_process)
        out.append(Recommendation(
            f"Pool: at most {per_pod} connections per replica{split} ({usable} usable ÷ {pods} pods during a"
            f" rollout), e.g. poolSize {size} and maxOverflow {per_process - size} (now"
            f" {engine.effective_pool_size()} + {engine.effective_max_overflow()}).",
            {"maxConnectionsPerReplica": per_pod, "maxConnectionsPerProcess": per_process, "poolSize": size,
             "maxOverflow": per_process - size}))
    elif per_process >= 1:
        out.append(Recommendation(
            f"Pool: at most {per_pod} connections per replica{split} ({usable} usable ÷ {pods} pods during a"
            f" rollout); with {engine.pool_class} that means at most {per_process} threads per process.",
            {"maxConnectionsPerReplica": per_pod, "maxConnectionsPerProcess": per_process}))
    elif processes > 1:  # each process opens its own pool: the processes are what must each get one
        out.append(Recommendation(
            f"Pool: {pods * processes} worker processes ({pods} pods during a rollout × {processes}) cannot each"
            f" hold even one connection in {usable} usable: change the server, run fewer processes, or add a"
            " pooler.", {"maxConnectionsPerReplica": per_pod, "maxConnectionsPerProcess": 0}))
    else:
        out.append(Recommendation(
            f"Pool: {pods} pods cannot each hold even one connection in {usable} usable: change the server"
            " or add a pooler.", {"maxConnectionsPerReplica": 0}))
    out.append(server_recommendation(spec, pods, peak))
    out.append(Recommendation(
        f"Pooler: a PgBouncer in transaction mode whose instances × (defaultPoolSize + reservePoolSize) ≤"
        f" {usable}, with max_client_conn × instances ≥ {pods * peak} (the app's connections become clients).",
        {"poolerServerConnections": usable, "poolerClientConnections": pods * peak}))
    return out


def server_recommendation(spec: PoolBenchmarkSpec, pods: int, peak: int) -> Recommendation:
    """The max_connections that holds ``pods`` × ``peak``, or why no setting can: the provider's allowed
    range (or PostgreSQL's) bounds it."""
    pg = spec.postgres
    reserved = pg.reserved_for(spec.workload.role)
    needed = pods * peak + reserved
    _, highest = pg.allowed_max_connections()
    if needed > highest:
        where = f"{pg.provider.rule.title} allows" if pg.provider is not None else "PostgreSQL allows"
        return Recommendation(
            f"Server: no server setting can hold this: {pods} pods × {peak} + {reserved} reserved = {needed}"
            f" connections, and {where} at most max_connections {highest}: use a pooler or fewer pods.",
            {"maxConnectionsNeeded": needed, "maxConnectionsAllowed": highest})
    return Recommendation(
        f"Server: max_connections {needed} ({pods} pods × {peak} + {reserved} reserved from this role;"
        f" now {pg.max_connections}).", {"maxConnections": needed})


def recommend_pooled(pooler: PoolerSpec, target: int, pods: int, peak: int, usable: int) -> list[Recommendation]:
    out = []
    clients = pods * peak
    instances = pooler.replicas
    per_instance = math.ceil(clients / instances)
    if per_instance > pooler.max_client_conn:
        out.append(Recommendation(
            f"Pooler clients: {pods} pods × {peak} = {clients} clients; with {instances} instances each needs"
            f" max_client_conn ≥ {per_instance} (now {pooler.max_client_conn}).", {"maxClientConn": per_instance}))
    server = instances * pooler.server_connections()
    if pooler.pool_mode == "session" and clients > server:
        out.append(Recommendation(
            f"Session mode: a client holds a server connection while it is open, so only {server} of the {clients}"
            f" clients run at once and the rest wait: use transaction mode, or {clients} server connections.",
            {"serverConnectionsNeeded": clients}))
    if server > usable:
        per = usable // instances
        out.append(Recommendation(
            f"Pooler server side: {instances} × ({pooler.default_pool_size} + {pooler.reserve_pool_size}) = {server}"
            f" server connections > {usable} usable: defaultPoolSize + reservePoolSize ≤ {per} per instance.",
            {"serverConnectionsPerInstance": per}))
    if not out:
        out.append(Recommendation(
            f"{target} replicas fit the poolers: {clients} clients during a rollout of at most"
            f" {instances * pooler.max_client_conn}, and {server} server connections of {usable} usable.",
            {"clients": clients, "serverConnections": server}))
    return out
