"""The PoolBenchmark spec: the YAML a user writes, parsed and validated.

This module is the single source of truth for the spec. The CRD's OpenAPI schema is generated
from these models (poolbench.core.crd), and a test proves the committed manifests/crd.yaml matches.
Validation errors carry the field path (``spec.workload.engine.poolSize``) so a user sees every
bad field in one message, never a traceback.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .contracts.drivers import ASYNC_DRIVER, Driver
from .contracts.replica_env import DriverOptions, OnError, PoolClass, PoolMode
from .serverlog import SERVER_LOG_SETTINGS

API_GROUP = "poolbench.dev"
API_VERSION = "v1alpha1"
KIND = "PoolBenchmark"
PLURAL = "poolbenchmarks"

#: Server settings the benchmark owns (own fields) or that would break the experiment.
FORBIDDEN_SETTINGS = frozenset(
    {
        "max_connections",
        "superuser_reserved_connections",
        "reserved_connections",
        "port",
        "listen_addresses",
        "unix_socket_directories",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "shared_preload_libraries",
        "max_worker_processes",
        "log_destination",
        "logging_collector",
        "log_directory",
        "log_filename",
        "lc_messages",  # errors are classified by the server's English texts
        "track_activities",  # off, pg_stat_activity shows no state: the monitor would be blind
    }
) | frozenset(SERVER_LOG_SETTINGS)  # the server log poolbench reads depends on each of these
SETTING_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$")

#: The benchmark's own monitor connection holds one slot for the whole run.
MONITOR_CONNECTIONS = 1
#: And one client slot at each pooler instance (its admin console, read with SHOW POOLS).
POOLER_MONITOR_CONNECTIONS = 1
#: PgBouncer's reserve_pool_timeout (its default, written into every generated config): a pool opens its
#: reserve connections only for a client that has waited this long.
RESERVE_POOL_TIMEOUT_SECONDS = 5

#: Longest benchmark name: child objects append "-postgres-0" style suffixes, labels stop at 63.
MAX_NAME_LENGTH = 40
#: A DNS label without "--": a variant's children are "<benchmark>--<variant>-…", so no benchmark's
#: own child can ever be named like another benchmark's variant child.
NAME_PATTERN = r"^[a-z](-?[a-z0-9])*$"


class _Model(BaseModel):
    """Strict camelCase model: unknown fields are errors, YAML keys are camelCase."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
    )


Role = Literal["superuser", "app"]
CleanupPolicy = Literal["ScaleDown", "Delete", "Keep"]
ReplicaCount = Annotated[int, Field(ge=1, le=500)]


Provider = Literal["rds", "azure", "cloudsql"]
#: PostgreSQL's own bounds for max_connections (guc_tables.c: MAX_BACKENDS).
PG_MAX_CONNECTIONS = 262143


class ProviderRule(BaseModel):
    """What a managed PostgreSQL reserves, and from whom: no customer role there is a PostgreSQL superuser.
    ``superuser_reserved``: slots no customer role may take (``superuser_reserved_connections`` or the
    provider's own reserve); ``admin_reserved``: further slots only the provider's admin role may take."""

    model_config = ConfigDict(frozen=True)
    title: str
    admin_role: str
    superuser_reserved: int
    admin_reserved: int
    min_connections: int
    max_connections: int
    source: str
    checked: str


#: RDS for PostgreSQL. max_connections: LEAST({DBInstanceClassMemory/9531392}, 5000) by default, allowed
#: 6-262143 (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html#RDS_Limits.MaxConnections).
#: Slots: "max_connections - superuser_reserved_connections - rds.rds_superuser_reserved_connections" for a
#: non-superuser, defaults 3 and 2; the master user is a member of rds_superuser (not a superuser), which may
#: take the 2 but not the 3 (https://aws.amazon.com/premiumsupport/knowledge-center/rds-postgresql-error-connection-slots/).
RDS_RULE = ProviderRule(
    title="RDS",
    admin_role="rds_superuser",
    superuser_reserved=3,
    admin_reserved=2,
    min_connections=6,
    max_connections=PG_MAX_CONNECTIONS,
    checked="2026-12-01",
    source="https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html#RDS_Limits.MaxConnections,"
    " https://aws.amazon.com/premiumsupport/knowledge-center/rds-postgresql-error-connection-slots/",
)
RDS_BYTES_PER_CONNECTION = 9531392
RDS_MAX = 5000
#: Azure Database for PostgreSQL Flexible Server: default max_connections by the SKU's memory (GiB), computed
#: at provisioning (not recomputed on a resize); 48 GiB and more: 5000; allowed 25-5000. "15 connections are
#: reserved for physical replication and monitoring", for every user role (azure_pg_admin is not a superuser)
#: (https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-limits; allowed range:
#: https://learn.microsoft.com/azure/postgresql/flexible-server/param-connections-authentication-connection-settings).
AZURE_RULE = ProviderRule(
    title="Azure Flexible Server",
    admin_role="azure_pg_admin",
    superuser_reserved=15,
    admin_reserved=0,
    min_connections=25,
    max_connections=5000,
    checked="2026-12-01",
    source="https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-limits",
)
AZURE_BY_MEMORY = {2: 50, 4: 429, 8: 859, 16: 1718, 32: 3437}
AZURE_TOP_FROM_GIB = 48
#: Cloud SQL for PostgreSQL: default max_connections by the instance's memory, from Google's flags page
#: (https://cloud.google.com/sql/docs/postgres/flags, max_connections): tiny (~0.6 GB, db-f1-micro) 25,
#: small (~1.7 GB, db-g1-small) 50, then from 3.75 GB 100, from 6 GB 200, from 7.5 GB 400, from 15 GB 500,
#: from 30 GB 600, from 60 GB 800, from 120 GB 1000: each band starts at its edge (7.5 GB gives 400, not 200).
#: Dedicated-core instances start at 3.75 GB: no machine lies between the shared-core ones and it. Allowed up
#: to 262143. superuser_reserved_connections stays PostgreSQL's 3, and cloudsqlsuperuser is not a superuser
#: (https://cloud.google.com/sql/docs/postgres/users).
CLOUDSQL_RULE = ProviderRule(
    title="Cloud SQL",
    admin_role="cloudsqlsuperuser",
    superuser_reserved=3,
    admin_reserved=0,
    min_connections=4,
    max_connections=PG_MAX_CONNECTIONS,
    checked="2026-12-01",  # min: PostgreSQL's own, 3 + 1
    source="https://cloud.google.com/sql/docs/postgres/flags, https://cloud.google.com/sql/docs/postgres/users",
)
CLOUDSQL_SHARED_CORE = ((0.6, 25), (1.7, 50))  # (up to GB, connections): db-f1-micro, db-g1-small
CLOUDSQL_DEDICATED_FROM_GB = 3.75
CLOUDSQL_BANDS = ((3.75, 100), (6.0, 200), (7.5, 400), (15.0, 500), (30.0, 600), (60.0, 800), (120.0, 1000))
PROVIDER_RULES: dict[str, ProviderRule] = {"rds": RDS_RULE, "azure": AZURE_RULE, "cloudsql": CLOUDSQL_RULE}


class ProviderSpec(_Model):
    """A managed PostgreSQL whose defaults set the limits: max_connections by the provider's published
    formula or table, and the slots each role cannot take."""

    name: Provider = Field(..., description="rds (AWS RDS for PostgreSQL), azure (Flexible Server), cloudsql.")
    memory_gib: float = Field(
        ...,
        alias="memoryGiB",
        gt=0,
        le=4096,
        description="The instance's memory in GiB (RDS: DBInstanceClassMemory, which AWS gives as the class's"
        " memory minus an unpublished OS reserve: the nominal memory is an upper bound).",
    )

    @model_validator(mode="after")
    def _published(self) -> ProviderSpec:
        m = self.memory_gib
        if self.name == "azure" and m < AZURE_TOP_FROM_GIB and m not in AZURE_BY_MEMORY:
            raise ValueError(
                f"azure: no published default for {m:g} GiB (the table has"
                f" {', '.join(str(g) for g in AZURE_BY_MEMORY)} and {AZURE_TOP_FROM_GIB} or more)"
            )
        if self.name == "cloudsql" and CLOUDSQL_SHARED_CORE[-1][0] < m < CLOUDSQL_DEDICATED_FROM_GB:
            raise ValueError(
                f"cloudsql: no machine has {m:g} GB (shared-core: 0.6 and 1.7 GB; dedicated-core from"
                f" {CLOUDSQL_DEDICATED_FROM_GB:g} GB), so Google publishes no default for it"
            )
        rule = self.rule
        if self.max_connections() < rule.min_connections:
            raise ValueError(
                f"{self.name}: {m:g} GiB gives max_connections {self.max_connections()}, below"
                f" {rule.title}'s minimum {rule.min_connections}"
            )
        return self

    @property
    def rule(self) -> ProviderRule:
        return PROVIDER_RULES[self.name]

    def max_connections(self) -> int:
        """The provider's default max_connections for this memory."""
        m = self.memory_gib
        if self.name == "rds":
            return min(int(m * 2**30) // RDS_BYTES_PER_CONNECTION, RDS_MAX)
        if self.name == "azure":
            return 5000 if m >= AZURE_TOP_FROM_GIB else AZURE_BY_MEMORY[int(m)]
        for top, connections in CLOUDSQL_SHARED_CORE:
            if m <= top:
                return connections
        return [c for start, c in CLOUDSQL_BANDS if m >= start][-1]

    def source(self) -> str:
        rule = self.rule
        how = {
            "rds": f"LEAST(DBInstanceClassMemory/{RDS_BYTES_PER_CONNECTION}, {RDS_MAX}) with the nominal"
            f" {self.memory_gib:g} GiB (an upper bound: AWS subtracts an unpublished OS reserve)",
            "azure": f"the published table for {self.memory_gib:g} GiB",
            "cloudsql": f"the flags page's band for {self.memory_gib:g} GB (check SHOW max_connections there)",
        }[self.name]
        reserved = (
            f"{rule.superuser_reserved} reserved from every role"
            if not rule.admin_reserved
            else f"{rule.superuser_reserved} superuser-reserved + {rule.admin_reserved} only {rule.admin_role} may take"
        )
        return (
            f"{rule.title}: {how}, max_connections {self.max_connections()}; {reserved}"
            f" ({rule.admin_role} is not a superuser); source {rule.source}, checked {rule.checked}"
        )


class PostgresSpec(_Model):
    """The server under test. Limits become server arguments."""

    max_connections: int = Field(100, ge=2, le=10000, description="PostgreSQL max_connections.")
    superuser_reserved_connections: int = Field(3, ge=0, le=1000, description="Slots only superusers may take.")
    image: str = Field(
        "postgres:16-bookworm",
        min_length=1,
        description="Container image for the in-cluster StatefulSet (cluster only). Any image that follows "
        "the official postgres image's contract (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA; "
        "arguments passed to postgres); its postgres user's UID goes in runAsUser.",
    )
    run_as_user: int = Field(
        999,
        ge=1,
        le=2147483647,
        description="UID and GID the Postgres pod runs as (and its fsGroup): the image's postgres user. "
        "999 in the official Debian-based postgres images (the default image), 70 in the -alpine ones "
        "(cluster only).",
    )
    settings: dict[str, str] = Field(
        default_factory=dict,
        description="Extra server settings (name: value), passed as -c name=value.",
    )

    @field_validator("settings")
    @classmethod
    def _settings_are_safe(cls, value: dict[str, str]) -> dict[str, str]:
        with_nul = sorted(k for k, v in value.items() if "\x00" in v)
        if with_nul:
            raise ValueError(f"a value may not contain a NUL byte: {', '.join(with_nul)}")
        bad = [k for k in value if not SETTING_NAME.match(k)]
        if bad:
            raise ValueError(f"not a server setting name: {', '.join(sorted(bad))}")
        owned = sorted(set(value) & FORBIDDEN_SETTINGS)
        if owned:
            raise ValueError(
                f"{', '.join(owned)} cannot be set here (owned by the benchmark or breaks it);"
                " use maxConnections / superuserReservedConnections"
            )
        return value

    provider: ProviderSpec | None = Field(
        None,
        description="A managed PostgreSQL to mimic: fills maxConnections and superuserReservedConnections by"
        " the provider's published defaults (give neither of those then); no role is a superuser there.",
    )

    @model_validator(mode="after")
    def _provider_fills_the_limits(self) -> PostgresSpec:
        if self.provider is None:
            return self
        given = [
            alias
            for name, alias in (
                ("max_connections", "maxConnections"),
                ("superuser_reserved_connections", "superuserReservedConnections"),
            )
            if name in self.model_fields_set
        ]
        if given:
            raise ValueError(f"{' and '.join(given)} cannot be given with provider: the provider's defaults fill them")
        self.max_connections = self.provider.max_connections()
        self.superuser_reserved_connections = self.provider.rule.superuser_reserved
        return self

    @model_validator(mode="after")
    def _reserved_below_max(self) -> PostgresSpec:
        if self.superuser_reserved_connections >= self.max_connections:
            raise ValueError(
                "superuserReservedConnections must be less than maxConnections"
                f" ({self.superuser_reserved_connections} >= {self.max_connections})"
            )
        return self

    def reserved_for(self, role: Role) -> int:
        """Slots ``role`` can never take: the one reserved-slot rule (``usable_slots``, and through it the
        budget of a run and of a plan, and the contradictions).
        Without a provider the superuser takes every slot and a normal role loses
        superuser_reserved_connections; with one, no role is a superuser: the provider's admin role (role
        superuser) loses the superuser-reserved slots, a normal role also the admin's."""
        if self.provider is None:
            return self.superuser_reserved_connections if role == "app" else 0
        rule = self.provider.rule
        return rule.superuser_reserved + (rule.admin_reserved if role == "app" else 0)

    def usable_slots(self, role: Role, monitors: int = 0) -> int:
        """Slots ``role`` can take: max_connections minus the slots it can never take and the ``monitors``'
        (the benchmark's own; none in production)."""
        return self.max_connections - self.reserved_for(role) - monitors

    def reserved_text(self, role: Role) -> str:
        """Why ``role`` loses ``reserved_for(role)`` slots, in words (empty when it loses none)."""
        reserved = self.reserved_for(role)
        if self.provider is None:
            return f"{reserved} reserved for superusers" if reserved else ""
        rule = self.provider.rule
        if role == "app" and rule.admin_reserved:
            return (
                f"{reserved} reserved: {rule.superuser_reserved} for superusers + {rule.admin_reserved} for"
                f" {rule.admin_role}"
            )
        who = f"whose {rule.admin_role} is not a superuser" if role == "superuser" else "for every role"
        return f"{reserved} reserved on {rule.title}, {who}"

    def server_reserved(self) -> tuple[int, int]:
        """(superuser_reserved_connections, reserved_connections) for a server that refuses exactly where
        the provider would: its admin role a non-superuser member of pg_use_reserved_connections."""
        if self.provider is None:
            return self.superuser_reserved_connections, 0
        return self.provider.rule.superuser_reserved, self.provider.rule.admin_reserved

    def allowed_max_connections(self) -> tuple[int, int]:
        """The range a server setting may take: the provider's, else PostgreSQL's."""
        if self.provider is None:
            return self.superuser_reserved_connections + 1, PG_MAX_CONNECTIONS
        return self.provider.rule.min_connections, self.provider.rule.max_connections


class EngineSpec(_Model):
    """create_engine() pool arguments. Omitted fields keep SQLAlchemy's defaults."""

    pool_class: PoolClass = Field("QueuePool", description="SQLAlchemy pool class.")
    pool_size: int | None = Field(None, ge=0, le=1000, description="QueuePool pool_size (default 5; 0 = no limit).")
    max_overflow: int | None = Field(
        None, ge=-1, le=1000, description="QueuePool max_overflow (default 10; -1 = no limit)."
    )
    pool_timeout: float | None = Field(None, ge=0, le=3600, description="Seconds a checkout waits (default 30).")
    pool_recycle: int | None = Field(
        None, ge=-1, le=86400, description="Replace connections older than N seconds at checkout."
    )
    pool_pre_ping: bool | None = Field(None, description="Ping a connection at checkout.")
    pool_use_lifo: bool | None = Field(None, description="Use the most recently returned connection first.")

    @model_validator(mode="after")
    def _queue_options_need_queue_pool(self) -> EngineSpec:
        if self.pool_class != "QueuePool":
            given = [
                alias
                for name, alias in (
                    ("pool_size", "poolSize"),
                    ("max_overflow", "maxOverflow"),
                    ("pool_timeout", "poolTimeout"),
                    ("pool_use_lifo", "poolUseLifo"),
                )
                if getattr(self, name) is not None
            ]
            if self.pool_class == "SingletonThreadPool" and "poolSize" in given:
                given.remove("poolSize")
            if given:
                raise ValueError(f"{', '.join(given)} cannot be used with poolClass {self.pool_class}")
        return self

    def effective_pool_size(self) -> int:
        return 5 if self.pool_size is None else self.pool_size

    def threads_problem(self, threads: int, threads_path: str) -> tuple[str, str] | None:
        """(field, reason) when this pool cannot serve ``threads`` caller threads predictably, else None.
        SingletonThreadPool keeps one connection per thread and, when a new thread's connection would make
        more than pool_size, closes others (sqlalchemy/pool/impl.py ``_cleanup``) even while their threads
        use them: those threads' statements then fail at random (psycopg2: "connection pointer is NULL").
        StaticPool shares one connection among all threads, created without a lock: threads that start
        together each open one and all but one are dropped at random, so its peak is no fixed number."""
        processes_path = threads_path.rsplit(".", 1)[0] + ".processes"
        if self.pool_class == "StaticPool" and threads > 1:
            return (
                "poolClass",
                f"StaticPool shares one connection among all threads and creates it without a lock:"
                f" the {threads} threads of {threads_path} starting together may each open one (the"
                " server sees anywhere from 1 to all of them) and their transactions interleave on"
                f" the one kept; set {threads_path} to 1 ({processes_path} for more"
                " callers) or use another poolClass",
            )
        if self.pool_class != "SingletonThreadPool":
            return None
        size = self.effective_pool_size()
        if size == 0:
            return (
                "poolSize",
                "poolSize 0 leaves SingletonThreadPool no connection to keep: its clean-up"
                f" fails at every checkout; give at least {threads_path} ({threads})",
            )
        if threads > size:
            given = f"{size}" if self.pool_size is not None else f"{size}, SQLAlchemy's default"
            return (
                "poolSize",
                f"SingletonThreadPool keeps one connection per thread and closes other threads'"
                f" connections, even in use, once more than poolSize are open: {threads_path}"
                f" ({threads}) is more than poolSize ({given}), so statements would fail at"
                f' random ("connection pointer is NULL"); set poolSize to at least {threads}',
            )
        return None

    def effective_max_overflow(self) -> int:
        return 10 if self.max_overflow is None else self.max_overflow


#: The most statements ``workload.onConnect`` and ``workload.transaction`` each take.
MAX_APP_STATEMENTS = 20


def checked_statement(value: str) -> str:
    """One SQL statement as the app sends it: not blank, no NUL byte."""
    if not value.strip():
        raise ValueError("a statement must not be blank")
    if "\x00" in value:
        raise ValueError("a statement may not contain a NUL byte (PostgreSQL cannot take one)")
    return value


MAX_STATEMENT_LENGTH = 10000
AppStatement = Annotated[str, Field(min_length=1, max_length=MAX_STATEMENT_LENGTH), AfterValidator(checked_statement)]


class WorkloadSpec(_Model):
    """What each replica (one process or pod = one engine) does."""

    threads: int = Field(15, ge=1, le=500, description="Caller threads per worker process.")
    driver: Driver = Field(
        "psycopg2",
        description="psycopg2 (the default), psycopg (psycopg 3) or asyncpg (create_async_engine; threads"
        " are then concurrent tasks on one event loop per process).",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes per replica (gunicorn/uvicorn workers), forked after the"
        " engine is configured; each opens its own pool.",
    )
    statement: str = Field(
        "SELECT pg_sleep(0.05)", min_length=1, max_length=10000, description="SQL run per iteration."
    )
    transaction: str | list[str] | None = Field(
        None,
        description="The statements of one unit of work, run in one transaction per iteration: one statement"
        " (as statement) or a list, run in order. In place of statement.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    on_connect: list[AppStatement] = Field(
        default_factory=list,
        max_length=MAX_APP_STATEMENTS,
        description="Statements the app runs on each new connection, before its first transaction, each on"
        " its own (SET, LISTEN, PREPARE, a session advisory lock, the driver's own setup).",
    )
    driver_options: DriverOptions = Field(
        "pooling",
        description="pooling: behind a transaction-mode pooler, the driver's server-side statement cache is"
        " off, as SQLAlchemy documents for PgBouncer (asyncpg: prepared_statement_cache_size=0,"
        " statement_cache_size=0 and unique statement names; psycopg: prepare_threshold=None); defaults:"
        " the driver as an app that sets none of them.",
    )
    iterations: int | None = Field(
        None, ge=1, le=10_000_000, description="Statements per thread (default 20 unless durationSeconds)."
    )
    duration_seconds: float | None = Field(
        None, gt=0, le=86400, description="Run each thread for this long instead of a fixed count."
    )
    hold_seconds: float = Field(
        10.0, ge=0, le=86400, description="Keep the engine and its pool open after the work (ghosts)."
    )
    role: Role = Field(
        "superuser", description="superuser (the postgres role) or app (a normal role the benchmark creates)."
    )
    on_error: OnError = Field("crash", description="crash: the replica dies on the first error; count: keep going.")
    engine: EngineSpec = Field(default_factory=EngineSpec)

    @field_validator("statement")
    @classmethod
    def _statement_not_blank(cls, value: str) -> str:
        return checked_statement(value)

    @field_validator("transaction", mode="before")
    @classmethod
    def _transaction_statements(cls, value: Any) -> Any:
        """One message at the field's own path, checked before pydantic tries each member of the union."""
        if value is None:
            return value
        if isinstance(value, str):
            return checked_statement(value)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("must be a statement or a list of statements")
        if not 1 <= len(value) <= MAX_APP_STATEMENTS:
            raise ValueError(f"give 1 to {MAX_APP_STATEMENTS} statements, not {len(value)}")
        for i, item in enumerate(value):
            try:
                checked_statement(item)
            except ValueError as err:
                raise ValueError(f"statement {i + 1}: {err}") from None
            if len(item) > MAX_STATEMENT_LENGTH:
                raise ValueError(f"statement {i + 1}: at most {MAX_STATEMENT_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _statement_or_transaction(self) -> WorkloadSpec:
        if self.transaction is not None and "statement" in self.model_fields_set:
            raise ValueError("give statement or transaction, not both")
        return self

    def transaction_statements(self) -> list[str]:
        """The statements of one unit of work, in order: ``transaction``, else ``statement``."""
        if self.transaction is None:
            return [self.statement]
        return [self.transaction] if isinstance(self.transaction, str) else list(self.transaction)

    @model_validator(mode="after")
    def _async_pools(self) -> WorkloadSpec:
        if self.driver == ASYNC_DRIVER and self.engine.pool_class not in ("QueuePool", "NullPool"):
            raise ValueError(
                f"driver {ASYNC_DRIVER} takes poolClass QueuePool (as AsyncAdaptedQueuePool) or NullPool,"
                f" not {self.engine.pool_class}"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_stop(self) -> WorkloadSpec:
        if self.iterations is not None and self.duration_seconds is not None:
            raise ValueError("give iterations or durationSeconds, not both")
        return self

    def effective_iterations(self) -> int | None:
        if self.duration_seconds is not None:
            return None
        return 20 if self.iterations is None else self.iterations


class SamplingSpec(_Model):
    interval_ms: int = Field(100, ge=20, le=60000, description="pg_stat_activity poll interval.")


class LimitsSpec(_Model):
    """What users may feel before a step counts as failed, even without a single error."""

    max_latency_p95_ms: float | None = Field(
        None, gt=0, le=3_600_000, description="Fail a step whose statement latency p95 exceeds this (ms)."
    )
    max_checkout_wait_p95_ms: float | None = Field(
        None, gt=0, le=3_600_000, description="Fail a step whose pool checkout wait p95 exceeds this (ms)."
    )


#: A variant's name goes into child object names ("<benchmark>--<variant>-pgbouncer"), kept within 63.
MAX_VARIANT_NAME_LENGTH = 11
MAX_VARIANTS = 6


class PoolerSpec(_Model):
    """A PgBouncer in front of PostgreSQL for one variant. Defaults are PgBouncer's own."""

    type: Literal["PgBouncer"] = Field("PgBouncer", description="The pooler (PgBouncer only).")
    pool_mode: PoolMode = Field(
        "session",
        description="session: a client keeps its server connection until it disconnects;"
        " transaction: only for the length of a transaction.",
    )
    default_pool_size: int = Field(
        20, ge=1, le=10000, description="Server connections per (database, user) pair, per pooler instance."
    )
    max_client_conn: int = Field(
        100,
        ge=1 + POOLER_MONITOR_CONNECTIONS,
        le=100000,
        description="Client connections each pooler instance accepts (the benchmark's monitor takes one of them).",
    )
    reserve_pool_size: int = Field(
        0,
        ge=0,
        le=10000,
        description="Extra server connections for a pool whose clients waited"
        f" reserve_pool_timeout ({RESERVE_POOL_TIMEOUT_SECONDS} s).",
    )
    server_idle_timeout_seconds: int = Field(
        600, ge=0, le=86400, description="Close a server connection idle this long (0: never)."
    )
    query_wait_timeout_seconds: int = Field(
        120, ge=0, le=86400, description="Disconnect a client that waited this long for a server connection (0: never)."
    )
    replicas: int = Field(
        1, ge=1, le=20, description="Pooler instances. Each has its own pools: they multiply server connections."
    )
    image: str = Field(
        "ghcr.io/cloudnative-pg/pgbouncer:1.24.0",
        min_length=1,
        description="Container image with a pgbouncer binary on PATH (cluster only); it runs"
        " `pgbouncer /etc/poolbench-pgbouncer/pgbouncer.ini` from a generated Secret.",
    )
    run_as_user: int = Field(
        998,
        ge=1,
        le=2147483647,
        description="UID the pooler pod runs as: the image's pgbouncer user (998 in CloudNativePG's image;"
        " cluster only).",
    )

    def usable_clients(self) -> int:
        """Client connections the app may open at one instance: max_client_conn minus the monitor's."""
        return self.max_client_conn - POOLER_MONITOR_CONNECTIONS

    def server_connections(self) -> int:
        """Most server connections one instance opens to the database: pool plus reserve."""
        return self.default_pool_size + self.reserve_pool_size

    def reserve_reachable(self) -> bool:
        """Does a waiting client ever get a reserve connection? Only after reserve_pool_timeout, so not
        when query_wait_timeout disconnects it first."""
        timeout = self.query_wait_timeout_seconds
        return self.reserve_pool_size > 0 and (timeout == 0 or timeout > RESERVE_POOL_TIMEOUT_SECONDS)

    def reachable_server_connections(self) -> int:
        """Server connections a client of one instance can get before query_wait_timeout: the pool, plus
        the reserve when a client may wait longer than reserve_pool_timeout."""
        return self.default_pool_size + (self.reserve_pool_size if self.reserve_reachable() else 0)

    def label(self) -> str:
        return (
            f"PgBouncer {self.pool_mode}, pool {self.default_pool_size}"
            + (f"+{self.reserve_pool_size}" if self.reserve_pool_size else "")
            + (f" × {self.replicas} instances" if self.replicas > 1 else "")
        )


class VariantSpec(_Model):
    """One way of connecting, measured through the whole step plan: direct, or through a pooler,
    optionally with its own engine settings (NullPool behind a pooler, say)."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=MAX_VARIANT_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="Short name (lowercase letters, digits, single '-'); part of child object names.",
    )
    pooler: PoolerSpec | None = Field(None, description="Connect through this pooler (omitted: directly).")
    engine: EngineSpec | None = Field(None, description="Replaces spec.workload.engine for this variant.")


#: The variant a benchmark without ``spec.variants`` measures.
DIRECT = "direct"


class SearchRange(_Model):
    min: int = Field(..., ge=1, le=500, description="Smallest replica count to try.")
    max: int = Field(..., ge=2, le=500, description="Largest replica count to try.")

    @model_validator(mode="after")
    def _min_below_max(self) -> SearchRange:
        if self.min >= self.max:
            raise ValueError(f"min must be less than max ({self.min} >= {self.max})")
        return self


class StepSearch(_Model):
    """Find the breaking point instead of listing steps: bisection between min and max."""

    search: SearchRange


#: The union's member tags in pydantic's error locations, dropped from the paths users see.
STEPS_UNION_TAGS = ("list[constrained-int]", "StepSearch")
SHAPE_ERRORS = ("list_type", "model_type", "dict_type", "model_attributes_type")
STEPS_SHAPE = "must be a list of replica counts, or {search: {min: A, max: B}}"


SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
TargetMode = Literal["Observe", "Step"]
#: A Kubernetes object name (DNS-1123 subdomain), as a Deployment or Secret is named.
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
#: A Secret data key.
SECRET_KEY = r"^[-._a-zA-Z0-9]{1,253}$"
#: The annotation a Deployment must carry before poolbench may change its replica count.
ALLOW_SCALING_ANNOTATION = "poolbench.dev/allow-scaling"
#: Owner labels that mean a GitOps tool will put the replica count back (poolbench warns).
GITOPS_LABELS = (
    "app.kubernetes.io/managed-by",
    "argocd.argoproj.io/instance",
    "kustomize.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/name",
)


class SecretKeyRef(_Model):
    """A Secret in the benchmark's namespace holding the monitor role's login: read by reference, never copied."""

    name: str = Field(..., max_length=253, pattern=OBJECT_NAME, description="The Secret's name.")
    username_key: str = Field("username", pattern=SECRET_KEY, description="The key holding the role name.")
    password_key: str = Field("password", pattern=SECRET_KEY, description="The key holding the password.")


class DatabaseSpec(_Model):
    """An existing PostgreSQL (in the cluster or outside it) in place of the StatefulSet poolbench would create.

    poolbench connects only as the monitor role, reads the server's limits live and never writes to it."""

    host: str = Field(
        ...,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$",
        description="Host name or address, e.g. a CloudNativePG cluster's `<name>-rw` Service.",
    )
    port: int = Field(5432, ge=1, le=65535, description="Port.")
    dbname: str = Field("postgres", min_length=1, max_length=63, description="Database the monitor connects to.")
    sslmode: SslMode = Field("prefer", description="libpq sslmode of the monitor's connection.")
    monitor_secret: SecretKeyRef = Field(
        ...,
        description="Secret with the monitor role's login: a role with pg_monitor and a CONNECTION LIMIT"
        " (on PostgreSQL 16+ also pg_use_reserved_connections).",
    )


class MatchSpec(_Model):
    """Which backends are the app's when their client address is not a pod's (a proxy or pooler between)."""

    usename: str | None = Field(None, min_length=1, max_length=63, description="The app's role.")
    application_name: str | None = Field(None, max_length=63, description="The app's application_name.")
    datname: str | None = Field(None, min_length=1, max_length=63, description="The app's database.")

    @model_validator(mode="after")
    def _some_field(self) -> MatchSpec:
        if self.usename is None and self.application_name is None and self.datname is None:
            raise ValueError("name at least one of usename, applicationName, datname")
        return self


class LoadJobSpec(_Model):
    """A load generator the user brings (k6, hey, …) run as a Job for each step: poolbench makes no HTTP load."""

    image: str = Field(..., min_length=1, max_length=512, description="The load generator's image.")
    command: list[str] | None = Field(None, max_length=50, description="The container's command.")
    args: list[str] | None = Field(None, max_length=200, description="The container's arguments.")


class AppPoolsSpec(_Model):
    """How the user's app pools its connections in each pod, as configured: poolbench predicts from it
    what a pod may open (the built-in workload's arithmetic) and sets that beside what it measures."""

    processes: int = Field(
        1, ge=1, le=64, description="Worker processes per pod (gunicorn/uvicorn workers), each with its own engine."
    )
    threads: int = Field(
        ...,
        ge=1,
        le=500,
        description="Callers per process that may check out a connection at once (threads, or concurrent"
        " tasks of an async app).",
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="The app's create_engine() pool arguments (one engine per process)."
    )


class TargetSpec(_Model):
    """The user's own Deployment (in the benchmark's namespace) in place of the built-in workload."""

    deployment: str = Field(..., max_length=253, pattern=OBJECT_NAME, description="The Deployment's name.")
    mode: TargetMode = Field(
        "Observe",
        description="Observe: change nothing, record replicas and connections for durationSeconds. Step: scale"
        ' the Deployment through spec.steps (it must be annotated poolbench.dev/allow-scaling: "true")'
        " and restore its replica count afterwards.",
    )
    duration_seconds: int = Field(300, ge=5, le=7 * 86400, description="Observe: how long to watch.")
    hold_seconds: int = Field(
        60, ge=5, le=86400, description="Step: how long to hold each step once its pods are ready."
    )
    match: MatchSpec | None = Field(
        None, description="The app's backends by role/application/database, where client_addr is not a pod IP."
    )
    load: LoadJobSpec | None = Field(None, description="Step: a load Job run during each step's hold.")
    pools: AppPoolsSpec | None = Field(
        None,
        description="The app's pools per pod (processes, threads, engine): the status then sets the per-pod"
        " peak they allow beside the measured one.",
    )


class SafetySpec(_Model):
    """Limits that keep a benchmark against a real server from filling it."""

    stop_at_used_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Stop a step (and the steps after it) once the server's client backends reach this"
        " fraction of the slots a normal role may use: before the server refuses anyone.",
    )


#: A Deployment's own default (apps/v1 RollingUpdate): what a rollout does when the spec says nothing.
DEFAULT_MAX_SURGE = "25%"
PERCENT = re.compile(r"^(0|[1-9][0-9]{0,3})%$")


class RolloutSpec(_Model):
    """How the app's Deployment rolls out: old and new pods overlap, so the server must hold both."""

    max_surge: int | str = Field(
        DEFAULT_MAX_SURGE,
        description="Extra pods during a rolling update, as a Deployment takes it: a count or a percentage"
        " of the replicas (rounded up). Default 25%, the Deployment's.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    measure: bool = Field(
        False,
        description="After the steps, measure a rolling update for real: the old replicas work while"
        " maxSurge new ones start, and the overlap's peak is set beside its prediction.",
    )
    replicas: ReplicaCount | None = Field(
        None, description="The replica count to roll (default: the largest count that passed)."
    )

    @field_validator("max_surge", mode="before")
    @classmethod
    def _count_or_percent(cls, value: Any) -> int | str:
        """One readable message for any bad value (a float, a boolean, a bad percentage), at the
        field's own path: checked before pydantic tries each member of ``int | str``."""
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 1000:
                raise ValueError(f"must be a count between 0 and 1000 pods, not {value}")
            return value
        if isinstance(value, str):
            if not PERCENT.match(value):
                raise ValueError(
                    f"must be a count of pods (0 to 1000) or a percentage from '0%' to '1000%'"
                    f" like '25%', not {value!r}"
                )
            if int(value[:-1]) > 1000:
                raise ValueError(f"must be a percentage from '0%' to '1000%', not {value!r}")
            return value
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        raise ValueError(f"must be a whole count of pods (0 to 1000) or a percentage like '25%', not {shown}")


class PoolBenchmarkSpec(_Model):
    postgres: PostgresSpec = Field(default_factory=PostgresSpec)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    steps: Annotated[list[ReplicaCount], Field(min_length=1, max_length=50)] | StepSearch | None = Field(
        None,
        description="Replica counts, run in order; or {search: {min, max}}: the largest passing count,"
        " found by bisection (each probe a real step from a clean slate). Required, except for a target"
        " in Observe mode.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    step_timeout_seconds: int = Field(300, ge=5, le=86400, description="Give up on a step after this long.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    stop_on_failure: bool = Field(True, description="Skip the remaining steps after a failed one.")
    cleanup: CleanupPolicy = Field("ScaleDown", description="Cluster only: what to do with children when done.")
    rollout: RolloutSpec | None = Field(
        None,
        description="The app's rolling update (maxSurge): the verdict and `poolbench plan` also state the"
        " replicas that stay safe while old and new pods overlap.",
    )
    variants: list[VariantSpec] | None = Field(
        None,
        min_length=1,
        max_length=MAX_VARIANTS,
        description="Ways of connecting to compare, each run through every step against the same server"
        " (omitted: one direct variant).",
    )
    database: DatabaseSpec | None = Field(
        None,
        description="An existing PostgreSQL to measure, in place of the StatefulSet (with spec.target;"
        " spec.postgres is then read from the server).",
    )
    target: TargetSpec | None = Field(
        None, description="The user's own Deployment, in place of the built-in workload (with spec.database)."
    )
    safety: SafetySpec = Field(default_factory=SafetySpec)

    @property
    def search(self) -> SearchRange | None:
        return self.steps.search if isinstance(self.steps, StepSearch) else None

    def step_counts(self) -> list[int]:
        """The listed replica counts; for a search, its bounds (what the largest probe may be)."""
        if self.steps is None:
            return []
        return list(self.steps) if isinstance(self.steps, list) else [self.steps.search.min, self.steps.search.max]

    def describe_steps(self) -> str:
        search = self.search
        if self.steps is None:
            return "no steps (observed)"
        return f"search {search.min}..{search.max}" if search else f"steps {self.steps}"

    def effective_variants(self) -> list[VariantSpec]:
        """The variants to run, in order: ``spec.variants``, or the one direct variant."""
        return list(self.variants) if self.variants else [VariantSpec(name=DIRECT)]

    def variant_tag(self, variant: VariantSpec) -> str:
        """The name a variant's steps, replicas and messages carry: its own with ``spec.variants``, none
        for the one direct variant of a benchmark without them (named as a benchmark without variants)."""
        return variant.name if self.variants else ""

    def for_variant(self, variant: VariantSpec) -> PoolBenchmarkSpec:
        """This spec as one variant sees it: its engine in place of ``workload.engine``."""
        if variant.engine is None:
            return self
        workload = self.workload.model_copy(update={"engine": variant.engine})
        return self.model_copy(update={"workload": workload})


def contradictions(spec: PoolBenchmarkSpec, benchmark: bool = True) -> list[tuple[str, str]]:
    """What each field allows alone but the fields together make impossible, by field path: a
    benchmark that could never pass, or never measure, is refused before it starts. ``benchmark``
    False: only what production could not run either (``poolbench plan``: no monitor slot there)."""
    problems = own_app_contradictions(spec)
    if spec.target is not None:
        return problems  # the built-in workload and server do not run: their rules do not apply
    w, pg = spec.workload, spec.postgres
    busy = w.hold_seconds + (w.duration_seconds or 0)
    if benchmark and busy >= spec.step_timeout_seconds:
        what = "holdSeconds + durationSeconds" if w.duration_seconds else "holdSeconds"
        problems.append(
            (
                "spec.workload.holdSeconds",
                f"{what} ({busy:g}s) must be shorter than stepTimeoutSeconds"
                f" ({spec.step_timeout_seconds}s): every step would time out",
            )
        )
    if benchmark and pg.usable_slots(w.role, MONITOR_CONNECTIONS) <= 0:
        why = pg.reserved_text(w.role)
        problems.append(
            (
                "spec.postgres.maxConnections",
                f"maxConnections {pg.max_connections} leaves no connection for the workload"
                f" ({why + ', ' if why else ''}{MONITOR_CONNECTIONS} for the benchmark's monitor)",
            )
        )
    elif pg.usable_slots(w.role) <= 0:
        problems.append(
            (
                "spec.postgres.maxConnections",
                f"maxConnections {pg.max_connections} leaves no connection for the workload"
                f" ({pg.reserved_text(w.role)})",
            )
        )
    for where, engine in [("spec.workload.engine", w.engine)] + [
        (f"spec.variants[{i}].engine", v.engine) for i, v in enumerate(spec.variants or []) if v.engine
    ]:
        problem = engine.threads_problem(w.threads, "spec.workload.threads")
        if problem:
            problems.append((f"{where}.{problem[0]}", problem[1]))
    seen: dict[str, int] = {}
    shapes: dict[str, int] = {}
    for i, variant in enumerate(spec.variants or []):
        if variant.name in seen:
            problems.append(
                (
                    f"spec.variants[{i}].name",
                    f"duplicate variant name {variant.name!r} (also spec.variants[{seen[variant.name]}])",
                )
            )
        seen.setdefault(variant.name, i)
        # The same pooler and engine as an earlier variant: a copy-paste slip that would measure nothing new.
        engine = variant.engine or spec.workload.engine
        shape = repr((variant.pooler.model_dump() if variant.pooler else None, engine.model_dump()))
        if shape in shapes:
            problems.append(
                (f"spec.variants[{i}]", f"measures the same pooler and engine as spec.variants[{shapes[shape]}]")
            )
        shapes.setdefault(shape, i)
    return problems


def own_app_contradictions(spec: PoolBenchmarkSpec) -> list[tuple[str, str]]:
    """The user's own app and database come together: poolbench has no credentials for the user's server
    to run its built-in workload with, and the user's app cannot reach a server poolbench made up."""
    problems = []
    given = spec.model_fields_set
    observing = spec.target is not None and spec.target.mode == "Observe"
    if spec.steps is None and not observing:
        problems.append(("spec.steps", "required (only a target in Observe mode runs without steps)"))
    if spec.steps is not None and observing:
        problems.append(
            ("spec.steps", "an Observe target changes no replica count: remove spec.steps or use mode Step")
        )
    if spec.target is not None and spec.database is None:
        problems.append(("spec.database", "spec.target needs spec.database: the server your app connects to"))
    if spec.database is not None and spec.target is None:
        problems.append(("spec.target", "spec.database needs spec.target: the Deployment of your app to measure"))
    if spec.database is None:
        return problems
    for field, why in (
        ("postgres", "the server's limits are read from spec.database"),
        ("workload", "the app is spec.target's Deployment"),
        ("variants", "your app connects one way; compare poolers with the built-in workload"),
        ("rollout", "the Deployment's own maxSurge is read from it"),
    ):
        if field in given and getattr(spec, field) is not None:
            problems.append((f"spec.{field}", f"not with spec.database: {why}"))
    if spec.search is not None:
        problems.append(("spec.steps", "a search is not run against your own app: list the replica counts"))
    pools = spec.target.pools if spec.target is not None else None
    if pools is not None:
        problem = pools.engine.threads_problem(pools.threads, "spec.target.pools.threads")
        if problem:
            problems.append((f"spec.target.pools.engine.{problem[0]}", problem[1]))
    return problems


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    namespace: str | None = None


class PoolBenchmark(BaseModel):
    """The whole document: apiVersion, kind, metadata, spec."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["poolbench.dev/v1alpha1"] = Field(..., alias="apiVersion")
    kind: Literal["PoolBenchmark"]
    metadata: Metadata
    spec: PoolBenchmarkSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


class SpecError(Exception):
    """Invalid input. ``problems`` lists (field path, message); str() is one readable message."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(self.message())

    def message(self) -> str:
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        return "invalid PoolBenchmark:\n  " + "\n  ".join(lines)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    problems = []
    shape_misses: set[tuple[Any, ...]] = set()
    deep: set[tuple[Any, ...]] = set()
    for item in err.errors():
        loc = prefix + tuple(item["loc"])
        tag = next((i for i, part in enumerate(loc) if part in STEPS_UNION_TAGS), None)
        if tag is not None:  # spec.steps is a list or a search: say which shape was wrong, not pydantic's tags
            where = loc[:tag]
            if len(loc) == tag + 1 and item["type"] in SHAPE_ERRORS:
                shape_misses.add(where)
                continue
            deep.add(where)
            loc = loc[:tag] + loc[tag + 1 :]
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append((_path(loc), msg))
    problems += [(_path(where), STEPS_SHAPE) for where in sorted(shape_misses - deep, key=str)]
    return problems


def parse_spec(spec: Any) -> PoolBenchmarkSpec:
    """Validate a bare ``spec`` mapping (what the operator receives from the API server)."""
    try:
        parsed = PoolBenchmarkSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(_problems(err, ("spec",))) from None
    problems = contradictions(parsed)
    if problems:
        raise SpecError(problems)
    return parsed


def parse_document(doc: Any, benchmark: bool = True) -> PoolBenchmark:
    """Validate a whole PoolBenchmark document (a parsed YAML mapping); ``benchmark`` as in ``contradictions``."""
    if not isinstance(doc, dict):
        raise SpecError([("", f"expected a mapping (a PoolBenchmark document), got {type(doc).__name__}")])
    try:
        bench = PoolBenchmark.model_validate(doc)
    except ValidationError as err:
        raise SpecError(_problems(err)) from None
    problems = contradictions(bench.spec, benchmark)
    if problems:
        raise SpecError(problems)
    return bench


def _duplicate_keys(node: yaml.Node, path: str = "", seen_nodes: set[int] | None = None) -> list[tuple[str, str]]:
    """Keys given twice in one mapping, by path: PyYAML would silently keep the last value, so a
    user's first value would vanish without a word. Each node is walked once (aliases share nodes,
    and may even be recursive)."""
    problems: list[tuple[str, str]] = []
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return problems
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            where = f"{path}.{key}" if path else key
            if isinstance(key_node, yaml.ScalarNode) and key in seen:
                problems.append(
                    (
                        where,
                        f"duplicate key (line {key_node.start_mark.line + 1}):"
                        " YAML would silently keep only the last value",
                    )
                )
            seen.add(key)
            problems += _duplicate_keys(value_node, where, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]", seen_nodes)
    return problems


def load_text(text: str, benchmark: bool = True) -> PoolBenchmark:
    """Parse YAML text holding exactly one PoolBenchmark (``benchmark`` as in ``contradictions``)."""
    try:
        duplicates = [p for node in yaml.compose_all(text, Loader=yaml.SafeLoader) for p in _duplicate_keys(node)]
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError([("", f"not valid YAML: {err}")]) from None
    if duplicates:
        raise SpecError(duplicates)
    if len(docs) != 1:
        raise SpecError([("", f"expected exactly one YAML document, found {len(docs)}")])
    return parse_document(docs[0], benchmark)
