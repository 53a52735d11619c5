"""The workload's contract: environment variables only (pure).

The local runner passes these to each process and the operator puts the same ones in the pod
template, so one replica behaves the same on a laptop and in a cluster. Connection details use
libpq's own variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the workload imports this module: keep pydantic out of a replica's start-up
    from .spec import PoolBenchmarkSpec, PoolerSpec, WorkloadSpec

PREFIX = "POOLBENCH_"
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


#: Set (to the pooler's type) when the replicas connect through a pooler: errors are classed as seen behind one.
POOLER_ENV = PREFIX + "POOLER"
#: Set with POOLER_ENV to the pooler's pool mode: in transaction mode consecutive transactions of one client
#: may run on different server connections, so the drivers must not rely on server-side prepared statements.
POOL_MODE_ENV = PREFIX + "POOL_MODE"
#: The spec's limits in milliseconds (comma-separated): every replica counts them as histogram bucket
#: edges, so a limit is judged exactly from the merged counts.
HISTOGRAM_EDGES_ENV = PREFIX + "HISTOGRAM_EDGES_MS"


def limit_edges(spec: PoolBenchmarkSpec) -> list[float]:
    """The limits that become histogram edges (the same on every replica of a benchmark)."""
    limits = spec.limits
    return sorted({v for v in (limits.max_latency_p95_ms, limits.max_checkout_wait_p95_ms) if v is not None})


def parse_edges(raw: str) -> tuple[float, ...]:
    """``HISTOGRAM_EDGES_ENV``'s value: positive numbers of milliseconds, comma-separated."""
    edges = tuple(float(part) for part in raw.split(",") if part.strip())
    if any(not 0 < e < float("inf") for e in edges):
        raise ValueError(f"{raw!r} has an edge that is not a positive number")
    return edges


#: The pooler instances as "host:port,host:port": each new connection picks one at random, as a Kubernetes
#: Service places each connection (locally; in a cluster the Service's one address is in PGHOST instead).
POOLER_HOSTS_ENV = PREFIX + "POOLER_HOSTS"


def render_pooler_hosts(addresses: list[tuple[str, int]]) -> str:
    return ",".join(f"{host}:{port}" for host, port in addresses)


def parse_pooler_hosts(raw: str) -> tuple[tuple[str, int], ...]:
    """``render_pooler_hosts`` read back; a malformed entry raises ValueError naming it."""
    addresses = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r} is not host:port")
        addresses.append((host, int(port)))
    return tuple(addresses)


def workload_env(spec: PoolBenchmarkSpec, *, exit_after_hold: bool = True, pooler: PoolerSpec | None = None
                 ) -> dict[str, str]:
    """Environment for one replica, without the connection target and the replica's own name.
    ``spec``: as the variant sees it (``PoolBenchmarkSpec.for_variant``)."""
    w = spec.workload
    engine = w.engine.model_dump(by_alias=True, exclude_none=True)
    env = {
        "POOLBENCH_THREADS": str(w.threads),
        "POOLBENCH_PROCESSES": str(w.processes),
        "POOLBENCH_DRIVER": w.driver,
        "POOLBENCH_STATEMENT": w.statement,
        "POOLBENCH_HOLD_SECONDS": str(w.hold_seconds),
        "POOLBENCH_ON_ERROR": w.on_error,
        "POOLBENCH_ENGINE": json.dumps(engine, sort_keys=True),
        "POOLBENCH_EXIT_AFTER_HOLD": "true" if exit_after_hold else "false",
        "PGUSER": role_name(w),
        "PGDATABASE": DATABASE,
    }
    if pooler is not None:
        env[POOLER_ENV] = pooler.type
        env[POOL_MODE_ENV] = pooler.pool_mode
    if limit_edges(spec):
        env[HISTOGRAM_EDGES_ENV] = ",".join(repr(float(e)) for e in limit_edges(spec))
    iterations = w.effective_iterations()
    if iterations is not None:
        env["POOLBENCH_ITERATIONS"] = str(iterations)
    else:
        env["POOLBENCH_DURATION_SECONDS"] = str(w.duration_seconds)
    return env


DRIVERS = ("psycopg2", "psycopg", "asyncpg")


def known_driver(name: str) -> str:
    if name not in DRIVERS:
        raise ValueError(f"{name!r} is not one of {', '.join(DRIVERS)}")
    return name


class WorkloadEnvError(ValueError):
    """The replica's environment is missing a setting or has a malformed one (named in the message)."""


#: What a replica cannot run without: it is started by poolbench (locally or by the operator), which
#: always sets these; a bare ``python -m workload`` would otherwise run forever against nothing.
REQUIRED_HINT = ("python -m workload is started by poolbench (poolbench run, or the operator), which sets its "
                 "environment")


@dataclass(frozen=True)
class WorkloadConfig:
    """What a replica reads from its environment."""

    threads: int
    statement: str
    processes: int
    driver: str
    iterations: int | None
    duration_seconds: float | None
    hold_seconds: float
    on_error: str
    engine: dict[str, Any]
    app_name: str
    metrics_port: int
    summary_path: str | None
    exit_after_hold: bool
    pooled: bool = False  # behind a pooler (POOLBENCH_POOLER set)
    histogram_edges_ms: tuple[float, ...] = ()  # the limits, as extra histogram edges
    pool_mode: str | None = None  # the pooler's pool mode (POOLBENCH_POOL_MODE), None when direct
    pooler_hosts: tuple[tuple[str, int], ...] = ()  # POOLBENCH_POOLER_HOSTS: one picked at random per connection

    @property
    def transaction_pooled(self) -> bool:
        """Behind a pooler in transaction mode: a client's server connection may change at every transaction."""
        return self.pooled and self.pool_mode == "transaction"

    @classmethod
    def checked_from_env(cls, env: dict[str, str]) -> WorkloadConfig:
        """``from_env`` for the entry point: refuses an environment that would run forever or is malformed."""
        if not (env.get(PREFIX + "ITERATIONS") or env.get(PREFIX + "DURATION_SECONDS")):
            raise WorkloadEnvError(f"neither {PREFIX}ITERATIONS nor {PREFIX}DURATION_SECONDS is set; "
                                   + REQUIRED_HINT)
        return cls.from_env(env)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> WorkloadConfig:
        def get(name: str, default: str = "") -> str:
            return env.get(PREFIX + name) or default

        def parsed(name: str, parse: Callable[[str], Any], default: str = "") -> Any:
            """POOLBENCH_<name> through ``parse`` (None when unset and without default), named when malformed."""
            raw = get(name, default)
            try:
                return parse(raw) if raw else None
            except ValueError as err:  # json.JSONDecodeError is one too
                raise WorkloadEnvError(f"{PREFIX}{name} is malformed: {err}") from err

        return cls(
            threads=parsed("THREADS", int, "1"),
            processes=parsed("PROCESSES", int, "1"),
            driver=parsed("DRIVER", known_driver, "psycopg2"),
            statement=get("STATEMENT", "SELECT 1"),
            iterations=parsed("ITERATIONS", int),
            duration_seconds=parsed("DURATION_SECONDS", float),
            hold_seconds=parsed("HOLD_SECONDS", float, "0"),
            on_error=get("ON_ERROR", "count"),
            engine=parsed("ENGINE", json.loads, "{}"),
            app_name=get("APP_NAME") or env.get("HOSTNAME") or "poolbench-replica",
            metrics_port=parsed("METRICS_PORT", int, "0"),
            summary_path=get("SUMMARY_PATH") or None,
            exit_after_hold=get("EXIT_AFTER_HOLD", "true").lower() == "true",
            pooled=bool(get("POOLER")),
            histogram_edges_ms=parsed("HISTOGRAM_EDGES_MS", parse_edges) or (),
            pool_mode=get("POOL_MODE") or None,
            pooler_hosts=parsed("POOLER_HOSTS", parse_pooler_hosts) or (),
        )

