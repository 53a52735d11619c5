"""A replica's environment: the only way the local runner and the operator (the pod template) configure
``python -m workload``, so one replica behaves the same on a laptop and in a cluster.

``WorkloadConfig.to_env`` renders it and ``WorkloadConfig.from_env`` reads it. The connection target is
libpq's own (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE): the drivers read it, not this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_type_hints

from .drivers import DEFAULT_DRIVER, Driver, known_driver

PREFIX = "POOLBENCH_"
THREADS_ENV = PREFIX + "THREADS"
PROCESSES_ENV = PREFIX + "PROCESSES"
DRIVER_ENV = PREFIX + "DRIVER"
STATEMENT_ENV = PREFIX + "STATEMENT"
#: JSON list: the statements of one unit of work, in one transaction (set when there is more than one;
#: STATEMENT_ENV then holds the first).
TRANSACTION_ENV = PREFIX + "TRANSACTION"
#: JSON list: statements run on each new connection, each on its own, before its first transaction.
ON_CONNECT_ENV = PREFIX + "ON_CONNECT"
#: "defaults": the driver keeps its own statement cache even behind a transaction-mode pooler.
DRIVER_OPTIONS_ENV = PREFIX + "DRIVER_OPTIONS"
ITERATIONS_ENV = PREFIX + "ITERATIONS"
DURATION_SECONDS_ENV = PREFIX + "DURATION_SECONDS"
HOLD_SECONDS_ENV = PREFIX + "HOLD_SECONDS"
ON_ERROR_ENV = PREFIX + "ON_ERROR"
#: JSON of ``EngineSettings``, with the spec's camelCase names.
ENGINE_ENV = PREFIX + "ENGINE"
#: The replica's name: its application_name (the operator sets it to the pod's name).
APP_NAME_ENV = PREFIX + "APP_NAME"
#: Port of its Prometheus metrics (``metrics``); unset or 0: none served.
METRICS_PORT_ENV = PREFIX + "METRICS_PORT"
#: Where its summary goes (``summary``); in Kubernetes the termination-message path.
SUMMARY_PATH_ENV = PREFIX + "SUMMARY_PATH"
#: "false": after the hold the replica stays up, done (a Deployment would restart a pod that exits).
EXIT_AFTER_HOLD_ENV = PREFIX + "EXIT_AFTER_HOLD"
#: Set (to the pooler's type) when the replicas connect through a pooler: errors are classed as seen behind one.
POOLER_ENV = PREFIX + "POOLER"
#: Set with POOLER_ENV to the pooler's pool mode: in transaction mode consecutive transactions of one client
#: may run on different server connections, so the drivers must not rely on server-side prepared statements.
POOL_MODE_ENV = PREFIX + "POOL_MODE"
#: The spec's limits in milliseconds (comma-separated): every replica counts them as histogram bucket
#: edges, so a limit is judged exactly from the merged counts.
HISTOGRAM_EDGES_ENV = PREFIX + "HISTOGRAM_EDGES_MS"
#: The pooler instances as "host:port,host:port": each new connection picks one at random, as a Kubernetes
#: Service places each connection (locally; in a cluster the Service's one address is in PGHOST instead).
POOLER_HOSTS_ENV = PREFIX + "POOLER_HOSTS"
#: Kubernetes sets it to the pod's name: the replica's name when APP_NAME_ENV is not set.
HOSTNAME_ENV = "HOSTNAME"
DEFAULT_APP_NAME = "poolbench-replica"

#: SQLAlchemy pools that make sense for a threaded sync engine.
PoolClass = Literal["QueuePool", "NullPool", "StaticPool", "SingletonThreadPool"]
OnError = Literal["crash", "count"]
DriverOptions = Literal["pooling", "defaults"]
PoolMode = Literal["session", "transaction"]


class WorkloadEnvError(ValueError):
    """The replica's environment is missing a setting or has a malformed one (named in the message)."""


#: What a replica cannot run without: it is started by poolbench (locally or by the operator), which
#: always sets these; a bare ``python -m workload`` would otherwise run forever against nothing.
REQUIRED_HINT = (
    "python -m workload is started by poolbench (poolbench run, or the operator), which sets its environment"
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class EngineSettings:
    """The engine's pool (the spec's ``workload.engine``). Every field but ``pool_class`` is the
    create_engine() argument of the same name; None keeps SQLAlchemy's default."""

    pool_class: PoolClass = "QueuePool"
    pool_size: int | None = None
    max_overflow: int | None = None
    pool_timeout: float | None = None
    pool_recycle: int | None = None
    pool_pre_ping: bool | None = None
    pool_use_lifo: bool | None = None

    def pool_arguments(self) -> dict[str, Any]:
        """create_engine()'s keyword arguments for the pool (the ones set)."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "pool_class" and (value := getattr(self, f.name)) is not None
        }

    def to_json(self) -> str:
        """ENGINE_ENV's value: the fields set, under the spec's camelCase names, sorted."""
        data = {_camel(f.name): value for f in fields(self) if (value := getattr(self, f.name)) is not None}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> EngineSettings:
        """``to_json`` read back; ValueError naming a setting that is unknown or of the wrong type."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"{raw!r} is not a JSON object")
        hints = get_type_hints(cls)
        names = {_camel(f.name): f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in names:
                raise ValueError(f"{key!r} is not one of {', '.join(names)}")
            if not _fits(value, hints[names[key]]):
                raise ValueError(f"{key} {value!r} is not a {hints[names[key]]}")
        return cls(**{names[key]: value for key, value in data.items()})


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value is one of ``hint``'s types (a Literal's members, int, float, bool, None)."""
    for option in get_args(hint) or (hint,):
        if (
            option is type(None)
            and value is None
            or isinstance(option, str)
            and value == option
            or option is bool
            and isinstance(value, bool)
            or option is int
            and isinstance(value, int)
            and not isinstance(value, bool)
            or option is float
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            return True
    return False


def render_edges(edges: tuple[float, ...]) -> str:
    return ",".join(repr(float(e)) for e in edges)


def parse_edges(raw: str) -> tuple[float, ...]:
    """HISTOGRAM_EDGES_ENV's value: positive numbers of milliseconds, comma-separated."""
    edges = tuple(float(part) for part in raw.split(",") if part.strip())
    if any(not 0 < e < float("inf") for e in edges):
        raise ValueError(f"{raw!r} has an edge that is not a positive number")
    return edges


def render_pooler_hosts(addresses: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> str:
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


def parse_statements(raw: str) -> tuple[str, ...]:
    """A JSON list of SQL statements (TRANSACTION_ENV, ON_CONNECT_ENV)."""
    data = json.loads(raw)
    if not isinstance(data, list) or not all(isinstance(item, str) and item.strip() for item in data):
        raise ValueError(f"{raw[:80]!r} is not a JSON list of statements")
    return tuple(data)


def _member(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"{raw!r} is not one of {', '.join(options)}")
        return raw

    return parse


@dataclass(frozen=True)
class WorkloadConfig:
    """What a replica reads from its environment. Defaults are the replica's when a variable is unset;
    ``app_name`` "" is not set here (the replica then takes HOSTNAME, else DEFAULT_APP_NAME)."""

    threads: int = 1
    statement: str = "SELECT 1"
    processes: int = 1
    driver: Driver = DEFAULT_DRIVER
    iterations: int | None = None
    duration_seconds: float | None = None
    hold_seconds: float = 0.0
    on_error: OnError = "count"
    engine: EngineSettings = field(default_factory=EngineSettings)
    app_name: str = ""
    metrics_port: int = 0  # 0: no metrics served
    summary_path: str | None = None
    exit_after_hold: bool = True
    pooler: str | None = None  # the pooler's type when behind one (POOLER_ENV)
    pool_mode: PoolMode | None = None  # the pooler's pool mode, None when direct
    histogram_edges_ms: tuple[float, ...] = ()  # the limits, as extra histogram edges
    pooler_hosts: tuple[tuple[str, int], ...] = ()  # one picked at random per connection
    transaction: tuple[str, ...] = ()  # more than one statement per unit of work (``statement`` is the first)
    on_connect: tuple[str, ...] = ()  # run on each new connection
    driver_options: DriverOptions = "pooling"

    def statements(self) -> tuple[str, ...]:
        """The statements of one unit of work, in order."""
        return self.transaction or (self.statement,)

    @property
    def pooled(self) -> bool:
        """Behind a pooler: errors are classed as seen behind one."""
        return self.pooler is not None

    @property
    def transaction_pooled(self) -> bool:
        """Behind a pooler in transaction mode: a client's server connection may change at every transaction."""
        return self.pooled and self.pool_mode == "transaction"

    def to_env(self) -> dict[str, str]:
        """The variables that give this config: the settings always, the optional ones when set."""
        env = {
            THREADS_ENV: str(self.threads),
            PROCESSES_ENV: str(self.processes),
            DRIVER_ENV: self.driver,
            STATEMENT_ENV: self.statement,
            HOLD_SECONDS_ENV: str(self.hold_seconds),
            ON_ERROR_ENV: self.on_error,
            ENGINE_ENV: self.engine.to_json(),
            EXIT_AFTER_HOLD_ENV: "true" if self.exit_after_hold else "false",
        }
        optional = {
            ITERATIONS_ENV: None if self.iterations is None else str(self.iterations),
            DURATION_SECONDS_ENV: None if self.duration_seconds is None else str(self.duration_seconds),
            APP_NAME_ENV: self.app_name or None,
            METRICS_PORT_ENV: str(self.metrics_port) if self.metrics_port else None,
            SUMMARY_PATH_ENV: self.summary_path,
            POOLER_ENV: self.pooler,
            POOL_MODE_ENV: self.pool_mode,
            HISTOGRAM_EDGES_ENV: render_edges(self.histogram_edges_ms) if self.histogram_edges_ms else None,
            POOLER_HOSTS_ENV: render_pooler_hosts(self.pooler_hosts) if self.pooler_hosts else None,
            TRANSACTION_ENV: json.dumps(list(self.transaction)) if self.transaction else None,
            ON_CONNECT_ENV: json.dumps(list(self.on_connect)) if self.on_connect else None,
            DRIVER_OPTIONS_ENV: self.driver_options if self.driver_options != "pooling" else None,
        }
        return env | {name: value for name, value in optional.items() if value is not None}

    @classmethod
    def checked_from_env(cls, env: Mapping[str, str]) -> WorkloadConfig:
        """``from_env`` for the entry point: refuses an environment that would run forever or is malformed."""
        if not (env.get(ITERATIONS_ENV) or env.get(DURATION_SECONDS_ENV)):
            raise WorkloadEnvError(f"neither {ITERATIONS_ENV} nor {DURATION_SECONDS_ENV} is set; " + REQUIRED_HINT)
        return cls.from_env(env)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkloadConfig:
        def parsed(name: str, parse: Callable[[str], Any], default: str = "") -> Any:
            """``name`` through ``parse`` (None when unset and without default), named when malformed."""
            raw = env.get(name) or default
            try:
                return parse(raw) if raw else None
            except ValueError as err:  # json.JSONDecodeError is one too
                raise WorkloadEnvError(f"{name} is malformed: {err}") from err

        return cls(
            threads=parsed(THREADS_ENV, int, "1"),
            processes=parsed(PROCESSES_ENV, int, "1"),
            driver=parsed(DRIVER_ENV, known_driver, DEFAULT_DRIVER),
            statement=env.get(STATEMENT_ENV) or "SELECT 1",
            iterations=parsed(ITERATIONS_ENV, int),
            duration_seconds=parsed(DURATION_SECONDS_ENV, float),
            hold_seconds=parsed(HOLD_SECONDS_ENV, float, "0"),
            on_error=parsed(ON_ERROR_ENV, _member(get_args(OnError)), "count"),
            engine=parsed(ENGINE_ENV, EngineSettings.from_json, "{}"),
            app_name=env.get(APP_NAME_ENV) or env.get(HOSTNAME_ENV) or DEFAULT_APP_NAME,
            metrics_port=parsed(METRICS_PORT_ENV, int, "0"),
            summary_path=env.get(SUMMARY_PATH_ENV) or None,
            exit_after_hold=(env.get(EXIT_AFTER_HOLD_ENV) or "true").lower() == "true",
            pooler=env.get(POOLER_ENV) or None,
            pool_mode=parsed(POOL_MODE_ENV, _member(get_args(PoolMode))),
            histogram_edges_ms=parsed(HISTOGRAM_EDGES_ENV, parse_edges) or (),
            pooler_hosts=parsed(POOLER_HOSTS_ENV, parse_pooler_hosts) or (),
            transaction=parsed(TRANSACTION_ENV, parse_statements) or (),
            on_connect=parsed(ON_CONNECT_ENV, parse_statements) or (),
            driver_options=parsed(DRIVER_OPTIONS_ENV, _member(get_args(DriverOptions)), "pooling"),
        )
