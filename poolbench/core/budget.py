"""The connection budget, as pure functions: what the pools open, what the server and the poolers
take, and how many replicas fit. Predictions, verdicts, ``poolbench plan`` and capacity checks all
count with these rules, so they never disagree.

Per replica, a QueuePool opens at most min(threads, pool_size + max_overflow) connections and,
after the burst, keeps min(pool_size, peak) of them open and idle (the "ghosts"). NullPool opens one
per concurrent checkout and keeps none (SQLAlchemy's pool/impl.py).

Behind a PgBouncer those are *client* connections at the pooler: they must fit in
instances × (max_client_conn − 1: the benchmark's monitor holds one at each), and the server sees
at most instances × (default_pool_size + reserve_pool_size) backends, whatever the replica count.
In session mode a client keeps its server connection while it is open, so at most that many
clients run at once and the rest wait: an overflow client's disconnect frees a server connection for
them, but the pools' kept (idle) clients never disconnect, so when those alone outnumber an
instance's server connections the ones without one wait until query_wait_timeout and are
disconnected. In transaction mode only a transaction holds one.

Connections reach the instances through a Service (locally, each new connection picks an instance
at random, as a Service does), so the arithmetic counts a number of connections safe at an instance
only when the chance that random placement puts more than its capacity there is below
``PLACEMENT_RISK`` (exact with one instance).

The slots a role can take on the server are ``PostgresSpec.usable_slots`` (its reserved-slot rule):
a benchmark's workload loses one more to the monitor, production does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .spec import MONITOR_CONNECTIONS, AppPoolsSpec, EngineSpec, PoolBenchmarkSpec, PoolerSpec

#: The chance, at most, that random placement puts more connections on one pooler instance than it
#: takes, for a count to be called safe (a union bound over the instances).
PLACEMENT_RISK = 1e-6
PLACEMENT_RISK_WORDS = "one in a million"


# -- the server's slots --------------------------------------------------------------------------


def usable_connections(spec: PoolBenchmarkSpec) -> int:
    """Slots a benchmark's workload can take: its role's usable slots minus the benchmark's monitor."""
    return spec.postgres.usable_slots(spec.workload.role, MONITOR_CONNECTIONS)


def production_usable(spec: PoolBenchmarkSpec) -> int:
    """Slots the app's role may use in production: no benchmark monitor holds one there."""
    return spec.postgres.usable_slots(spec.workload.role)


def max_connections_for(spec: PoolBenchmarkSpec, connections: int) -> int:
    """The max_connections that leaves ``connections`` usable to the app's role in production."""
    return connections + spec.postgres.reserved_for(spec.workload.role)


# -- the poolers' capacity -----------------------------------------------------------------------


def server_capacity(pooler: PoolerSpec) -> int:
    """Server connections every instance together may open: instances × (pool + reserve)."""
    return pooler.replicas * pooler.server_connections()


def client_capacity(pooler: PoolerSpec, per_instance: int) -> int:
    """Client connections every instance together accepts, each taking ``per_instance``."""
    return pooler.replicas * per_instance


def server_backends(pooler: PoolerSpec, clients: int) -> int:
    """Server connections the poolers open for ``clients`` clients, at most their pools allow."""
    return min(clients, server_capacity(pooler))


def surely_over(count: int, instances: int, capacity: int) -> bool:
    """More than every instance together takes: an overflow wherever the connections land."""
    return count > instances * capacity


def overflow_risk(clients: int, instances: int, capacity: int) -> float:
    """An upper bound on the chance that one of ``instances`` gets more than ``capacity`` of ``clients``
    connections, each placed on an instance uniformly at random (as a Service does):
    instances × P(Binomial(clients, 1/instances) > capacity), in log space (clients may be ~10^6)."""
    if clients <= capacity:
        return 0.0
    if instances <= 1 or surely_over(clients, instances, capacity):
        return 1.0
    p = 1.0 / instances
    k = capacity + 1
    if k <= clients // instances:  # at or below the median: the tail holds at least half the mass
        return 1.0
    log_first = (
        math.lgamma(clients + 1)
        - math.lgamma(k + 1)
        - math.lgamma(clients - k + 1)
        + k * math.log(p)
        + (clients - k) * math.log1p(-p)
    )
    # k is at or above the mode, so the terms only shrink: sum them relative to the first.
    total, term, odds = 1.0, 1.0, p / (1.0 - p)
    for j in range(k, clients):
        term *= (clients - j) / (j + 1) * odds
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, instances * math.exp(log_first + math.log(total)))


def placement_overflows(clients: int, instances: int, capacity: int) -> bool:
    """Can one instance get more than ``capacity`` of ``clients`` randomly placed connections? The one
    rule for pooler capacity (prediction, verdict, plan, session waiting): exact with one instance,
    otherwise true unless the chance is below PLACEMENT_RISK."""
    return overflow_risk(clients, instances, capacity) >= PLACEMENT_RISK


def session_starves(clients: int, kept: int, instances: int, server: int) -> bool:
    """Session mode: can the clients the pools keep open take every server connection of an instance
    while other clients there wait for one? A kept client never disconnects and an engine's waiting
    threads never return to its pool, so those clients wait until query_wait_timeout. The one rule for
    the prediction, the verdict and plan (a union bound, as ``placement_overflows``)."""
    return placement_overflows(clients, instances, server) and placement_overflows(kept, instances, server - 1)


def capacity_needed(clients: int, instances: int) -> int:
    """The least per-instance capacity at which ``clients`` randomly placed connections overflow none
    of ``instances`` (``placement_overflows``)."""
    return least(lambda capacity: not placement_overflows(clients, instances, capacity), 1, clients)


def server_needed(clients: int, kept: int, instances: int) -> int:
    """Session mode: the least server connections per instance at which ``kept`` kept clients cannot
    starve the others (``session_starves``)."""
    return least(lambda server: not session_starves(clients, kept, instances, server), 1, kept + 1)


# -- searching a count ---------------------------------------------------------------------------


def largest(ok: Callable[[int], bool], upper: int, lower: int = 0) -> int:
    """The largest count in lower..upper for which ``ok`` holds, ``ok`` holding up to some count and not
    beyond (``lower`` when it fails just above it; ``ok(lower)`` is never asked)."""
    low, high = lower, upper
    while low < high:
        mid = (low + high + 1) // 2
        if ok(mid):
            low = mid
        else:
            high = mid - 1
    return low


def least(ok: Callable[[int], bool], low: int, high: int) -> int:
    """The smallest value in low..high for which ``ok`` holds, ``ok`` failing up to some value and holding
    beyond (``high`` when it holds nowhere below it; ``ok(high)`` is never asked)."""
    return largest(lambda value: not ok(value), high - 1, low - 1) + 1


# -- pooled loads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PooledCheck:
    """What the poolers do with a load: ``outcome`` fits, waits (session: clients wait for an overflow
    client's disconnect, then run) or fails; ``cause`` of a failure: clients (max_client_conn), server
    (the poolers' logins beyond the usable slots are refused) or kept (session: kept clients outnumber
    an instance's server connections and wait until query_wait_timeout)."""

    outcome: str
    cause: str = ""


def pooled_check(pooler: PoolerSpec, clients: int, kept: int, usable: int, per_instance: int) -> PooledCheck:
    """``clients`` (peak) and ``kept`` (idle after the burst) client connections through ``pooler``,
    whose instances each accept ``per_instance`` clients, in front of ``usable`` server slots."""
    n, server = pooler.replicas, pooler.server_connections()
    if placement_overflows(clients, n, per_instance):
        return PooledCheck("fails", "clients")
    if server_backends(pooler, clients) > usable:
        return PooledCheck("fails", "server")
    if pooler.pool_mode == "session":  # the reserve serves only clients that already waited for it
        if session_starves(clients, kept, n, pooler.reachable_server_connections()):
            return PooledCheck("fails", "kept")
        if placement_overflows(clients, n, pooler.default_pool_size):
            return PooledCheck("waits")
    elif placement_overflows(clients, n, server):  # transaction mode: clients queue for a transaction's end
        return PooledCheck("waits")
    return PooledCheck("fits")


def pooled_limits(
    per_peak: int, per_idle: int, pooler: PoolerSpec, usable: int, per_instance: int, max_surge: int | str | None = None
) -> tuple[int, int]:
    """(most replicas without waiting, most replicas without failing) through ``pooler``; with
    ``max_surge``, with a rolling update's surge pods beside them."""
    if per_peak <= 0:
        return 0, 0

    def pods(replicas: int) -> int:
        return replicas + (surge_pods(replicas, max_surge) if max_surge is not None else 0)

    def check(replicas: int) -> PooledCheck:
        count = pods(replicas)
        return pooled_check(pooler, count * per_peak, count * per_idle, usable, per_instance)

    upper = client_capacity(pooler, per_instance) // per_peak  # beyond it the clients cannot fit anywhere
    safe = largest(lambda r: check(r).outcome != "fails", upper)
    return largest(lambda r: check(r).outcome == "fits", safe), safe


# -- what a workload opens -----------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    replicas: int
    per_replica_peak: int
    per_replica_idle: int
    usable: int
    pooler: PoolerSpec | None = None

    @property
    def client_peak(self) -> int:
        """Connections the engines open (to the server, or to the pooler when pooled)."""
        return self.replicas * self.per_replica_peak

    @property
    def client_capacity(self) -> int:
        """Client connections the poolers accept (0: no pooler)."""
        return client_capacity(self.pooler, self.pooler.usable_clients()) if self.pooler else 0

    @property
    def server_capacity(self) -> int:
        """Server connections the poolers may open (0: no pooler)."""
        return server_capacity(self.pooler) if self.pooler else 0

    @property
    def peak(self) -> int:
        """Server backends at the peak: the engines' connections, or what the poolers open for them
        (never more than the usable slots: the server refuses the poolers' logins beyond them)."""
        if self.pooler is None:
            return self.client_peak
        return min(server_backends(self.pooler, self.client_peak), self.usable)

    @property
    def idle(self) -> int:
        """Ghosts: the app pools' idle connections (at the pooler, when pooled)."""
        return self.replicas * self.per_replica_idle

    @property
    def waiting(self) -> int:
        """Pooled: clients beyond the server connections. In session mode they wait for another
        client to disconnect; in transaction mode for a transaction to end."""
        return max(0, self.client_peak - self.server_capacity) if self.pooler else 0

    @property
    def check(self) -> PooledCheck:
        """Fits, waits (session mode) or fails: the same rule as ``pooled_limits``."""
        if self.pooler is None:
            return PooledCheck("fits") if self.peak <= self.usable else PooledCheck("fails", "server")
        return pooled_check(self.pooler, self.client_peak, self.idle, self.usable, self.pooler.usable_clients())

    @property
    def fits(self) -> bool:
        return self.check.outcome != "fails"


def process_peak(engine: EngineSpec, threads: int) -> int:
    """Connections one engine (one worker process) with ``threads`` callers opens at most
    (sqlalchemy/pool/impl.py): NullPool one per concurrent checkout; StaticPool one (the spec refuses it
    more than one thread: threads starting together each open one); SingletonThreadPool one per thread
    (the spec refuses more threads than its pool_size: it would close connections in use); QueuePool
    min(threads, pool_size + max_overflow), no cap with pool_size 0 or max_overflow -1."""
    if engine.pool_class == "NullPool":
        return threads
    if engine.pool_class == "StaticPool":
        return 1
    if engine.pool_class == "SingletonThreadPool":
        return threads
    size, overflow = engine.effective_pool_size(), engine.effective_max_overflow()
    if size == 0 or overflow < 0:
        return threads
    return min(threads, size + overflow)


def process_idle(engine: EngineSpec, threads: int) -> int:
    """Connections one engine keeps open and idle after its burst (its ghosts): StaticPool and
    SingletonThreadPool keep every connection until disposed; QueuePool's queue keeps pool_size of them
    (all, with pool_size 0: an unbounded queue); NullPool none."""
    peak = process_peak(engine, threads)
    if engine.pool_class == "NullPool":
        return 0
    if engine.pool_class in ("StaticPool", "SingletonThreadPool"):
        return peak
    size = engine.effective_pool_size()
    return peak if size == 0 else min(size, peak)


def replica_peak(engine: EngineSpec, threads: int, processes: int) -> int:
    """A replica (pod) runs ``processes`` worker processes, each with its own engine and pool."""
    return processes * process_peak(engine, threads)


def replica_idle(engine: EngineSpec, threads: int, processes: int) -> int:
    return processes * process_idle(engine, threads)


def per_process_peak(spec: PoolBenchmarkSpec) -> int:
    """``process_peak`` of the built-in workload's engine and threads."""
    return process_peak(spec.workload.engine, spec.workload.threads)


def per_process_idle(spec: PoolBenchmarkSpec) -> int:
    return process_idle(spec.workload.engine, spec.workload.threads)


def per_replica_peak(spec: PoolBenchmarkSpec) -> int:
    """``replica_peak`` of the built-in workload (``workload.processes`` worker processes)."""
    w = spec.workload
    return replica_peak(w.engine, w.threads, w.processes)


def per_replica_idle(spec: PoolBenchmarkSpec) -> int:
    w = spec.workload
    return replica_idle(w.engine, w.threads, w.processes)


def app_pools_peak(pools: AppPoolsSpec) -> int:
    """What the user's own pods may open at most, by their pools' settings (``spec.target.pools``): the
    built-in workload's rule."""
    return replica_peak(pools.engine, pools.threads, pools.processes)


def app_pools_idle(pools: AppPoolsSpec) -> int:
    return replica_idle(pools.engine, pools.threads, pools.processes)


def predict(spec: PoolBenchmarkSpec, replicas: int, pooler: PoolerSpec | None = None) -> Prediction:
    return Prediction(replicas, per_replica_peak(spec), per_replica_idle(spec), usable_connections(spec), pooler)


# -- how many replicas fit -----------------------------------------------------------------------


def surge_pods(replicas: int, max_surge: int | str) -> int:
    """Extra pods a rolling update may start: an absolute count, or a percentage of the replicas
    rounded up (Kubernetes rounds maxSurge up and maxUnavailable down)."""
    if isinstance(max_surge, int):
        return max_surge
    return math.ceil(replicas * int(max_surge.rstrip("%")) / 100)


def rollout_safe(per_replica: int, budget: int, max_surge: int | str | None = None) -> int:
    """The most replicas whose connections (with a rollout's surge pods, if given) fit in ``budget``."""
    if per_replica <= 0:
        return 0
    replicas = budget // per_replica
    if max_surge is None:
        return replicas
    while replicas > 0 and (replicas + surge_pods(replicas, max_surge)) * per_replica > budget:
        replicas -= 1
    return replicas


def pooled_replica_limits(spec: PoolBenchmarkSpec, pooler: PoolerSpec) -> tuple[int, int]:
    """(most replicas without waiting, most replicas without failing) through the benchmark's poolers
    (each instance's console holds one of its max_client_conn for the monitor)."""
    return pooled_limits(
        per_replica_peak(spec), per_replica_idle(spec), pooler, usable_connections(spec), pooler.usable_clients()
    )


def pooled_safe_replicas(spec: PoolBenchmarkSpec, pooler: PoolerSpec) -> int:
    """Most replicas the poolers take without refusing a client (max_client_conn), without the server
    refusing their logins, and, in session mode, without a kept client waiting out query_wait_timeout."""
    return pooled_replica_limits(spec, pooler)[1]


def predicted_safe_replicas(spec: PoolBenchmarkSpec, pooler: PoolerSpec | None = None) -> int:
    """What the arithmetic says the benchmark will find: the most replicas that fit (through the
    poolers when pooled)."""
    if pooler is not None:
        return pooled_safe_replicas(spec, pooler)
    return rollout_safe(per_replica_peak(spec), usable_connections(spec))


# -- the user's own app, measured live -----------------------------------------------------------


@dataclass(frozen=True)
class OwnAppAnswer:
    """How many replicas of an app that holds ``per_pod`` connections per pod fit beside the other
    tenants' ``others`` in ``usable`` slots, at rest and through a rolling update. ``per_pod`` 0 (nothing
    measured) fits any count: then ``safe_at_rest`` and ``safe_in_rollout`` are 0 and ``refusals_from`` is
    0, "no count known"."""

    per_pod: int
    usable: int
    others: int
    available: int  # usable - others (negative: the others alone are over)
    safe_at_rest: int  # largest N with N * per_pod <= available
    safe_in_rollout: int  # largest N with (N + surge(N)) * per_pod <= available
    max_surge: int | str | None  # None: no rolling update's surge (Recreate, or not known)
    hpa_max: int | None
    replicas: int | None
    needed_at_hpa_max: int | None  # (hpa_max + surge(hpa_max)) * per_pod
    refusals_from: int  # the first replica count that does not fit in a rollout (0: per_pod 0)
    per_pod_from: str = "measured"  # or "predicted": spec.target.pools, when nothing was measured

    def surge(self, replicas: int) -> int:
        """Surge pods a rollout of ``replicas`` starts (0 without a maxSurge)."""
        return 0 if self.max_surge is None else surge_pods(replicas, self.max_surge)

    def needed(self, replicas: int) -> int:
        """Connections ``replicas`` need through a rollout: (replicas + surge) × per_pod."""
        return (replicas + self.surge(replicas)) * self.per_pod

    def to_status(self) -> dict[str, Any]:
        return {
            "perPod": self.per_pod,
            "usable": self.usable,
            "others": self.others,
            "available": self.available,
            "safeAtRest": self.safe_at_rest,
            "safeInRollout": self.safe_in_rollout,
            "maxSurge": self.max_surge,
            "hpaMax": self.hpa_max,
            "replicas": self.replicas,
            "neededAtHpaMax": self.needed_at_hpa_max,
            "refusalsFrom": self.refusals_from,
            "perPodFrom": self.per_pod_from,
        }


def own_app_answer(
    per_pod: int,
    usable: int,
    others: int,
    max_surge: int | str | None = None,
    hpa_max: int | None = None,
    replicas: int | None = None,
    per_pod_from: str = "measured",
) -> OwnAppAnswer:
    """The arithmetic of ``OwnAppAnswer`` (``rollout_safe``, ``surge_pods``)."""
    available = usable - others
    room = max(0, available)
    at_rest = rollout_safe(per_pod, room)
    in_rollout = rollout_safe(per_pod, room, max_surge)
    needed = None
    if hpa_max is not None:
        surge = 0 if max_surge is None else surge_pods(hpa_max, max_surge)
        needed = (hpa_max + surge) * per_pod
    return OwnAppAnswer(
        per_pod=per_pod,
        usable=usable,
        others=others,
        available=available,
        safe_at_rest=at_rest,
        safe_in_rollout=in_rollout,
        max_surge=max_surge,
        hpa_max=hpa_max,
        replicas=replicas,
        needed_at_hpa_max=needed,
        refusals_from=in_rollout + 1 if per_pod > 0 else 0,
        per_pod_from=per_pod_from,
    )


@dataclass(frozen=True)
class PoolsComparison:
    """The per-pod connections ``spec.target.pools`` allows (``app_pools_peak``/``_idle``) beside the
    measured ones. Measured above predicted is impossible for pools as described: a setting differs, or a
    process has more than one engine."""

    predicted_peak: int
    predicted_idle: int
    measured_peak: int
    measured_idle: int

    @property
    def over(self) -> bool:
        return self.measured_peak > self.predicted_peak


def compare_pools(pools: AppPoolsSpec, measured_peak: int, measured_idle: int) -> PoolsComparison:
    return PoolsComparison(app_pools_peak(pools), app_pools_idle(pools), measured_peak, measured_idle)
