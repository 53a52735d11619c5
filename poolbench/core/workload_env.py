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


#: Set (to the pooler's type) when the replicas connect through a pooler: errors are classed as seen behind one.
POOLER_ENV = PREFIX + "POOLER"
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
    pooler_hosts: tuple[tuple[str, int], ...] = ()  # POOLBENCH_POOLER_HOSTS: one picked at random per connection

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
            pooler_hosts=parsed("POOLER_HOSTS", parse_pooler_hosts) or (),
        )

