"""A benchmark's replicas' environment, derived from its spec (pure).

The variables themselves, how they are written and read, are the contract in
``poolbench.core.contracts.replica_env``; this module decides their values from the spec, and the roles
the replicas log in as. The local runner passes the result to each process and the operator puts it in the
pod template, so one replica behaves the same on a laptop and in a cluster.
"""

from __future__ import annotations

from .contracts.replica_env import EngineSettings, WorkloadConfig
from .spec import EngineSpec, PoolBenchmarkSpec, PoolerSpec, WorkloadSpec

APP_ROLE = "poolbench_app"
SUPERUSER = "postgres"
DATABASE = "postgres"


def role_name(workload: WorkloadSpec) -> str:
    return APP_ROLE if workload.role == "app" else SUPERUSER


#: Locally, a provider's admin role (rds_superuser, azure_pg_admin, cloudsqlsuperuser): no superuser.
PROVIDER_ADMIN_ROLE = "poolbench_provider_admin"


def local_role(spec: PoolBenchmarkSpec) -> str:
    """The role the workload logs in as on the local server: with a provider, role superuser is the
    provider's admin role, which is not a PostgreSQL superuser there either."""
    if spec.workload.role == "superuser" and spec.postgres.provider is not None:
        return PROVIDER_ADMIN_ROLE
    return role_name(spec.workload)


def limit_edges(spec: PoolBenchmarkSpec) -> list[float]:
    """The limits that become histogram edges (the same on every replica of a benchmark)."""
    limits = spec.limits
    return sorted({v for v in (limits.max_latency_p95_ms, limits.max_checkout_wait_p95_ms) if v is not None})


def engine_settings(engine: EngineSpec) -> EngineSettings:
    """The spec's engine as the replica's environment carries it."""
    return EngineSettings(
        pool_class=engine.pool_class,
        pool_size=engine.pool_size,
        max_overflow=engine.max_overflow,
        pool_timeout=engine.pool_timeout,
        pool_recycle=engine.pool_recycle,
        pool_pre_ping=engine.pool_pre_ping,
        pool_use_lifo=engine.pool_use_lifo,
    )


def workload_config(
    spec: PoolBenchmarkSpec, *, exit_after_hold: bool = True, pooler: PoolerSpec | None = None
) -> WorkloadConfig:
    """What every replica of ``spec`` is configured with; the platform adds each one's name, summary path,
    metrics port and connection target. ``spec``: as the variant sees it (``PoolBenchmarkSpec.for_variant``)."""
    w = spec.workload
    iterations = w.effective_iterations()
    statements = w.transaction_statements()
    return WorkloadConfig(
        threads=w.threads,
        statement=statements[0],
        transaction=tuple(statements) if len(statements) > 1 else (),
        on_connect=tuple(w.on_connect),
        driver_options=w.driver_options,
        processes=w.processes,
        driver=w.driver,
        iterations=iterations,
        duration_seconds=w.duration_seconds if iterations is None else None,
        hold_seconds=w.hold_seconds,
        on_error=w.on_error,
        engine=engine_settings(w.engine),
        exit_after_hold=exit_after_hold,
        pooler=pooler.type if pooler is not None else None,
        pool_mode=pooler.pool_mode if pooler is not None else None,
        histogram_edges_ms=tuple(limit_edges(spec)),
    )


def workload_env(
    spec: PoolBenchmarkSpec, *, exit_after_hold: bool = True, pooler: PoolerSpec | None = None
) -> dict[str, str]:
    """Environment for one replica, without the connection target and the replica's own name: the
    ``workload_config`` and the role and database it logs in to (libpq's PGUSER and PGDATABASE)."""
    env = workload_config(spec, exit_after_hold=exit_after_hold, pooler=pooler).to_env()
    return env | {"PGUSER": role_name(spec.workload), "PGDATABASE": DATABASE}
