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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

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
)
SETTING_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$")

#: The benchmark's own monitor connection holds one slot for the whole run.
MONITOR_CONNECTIONS = 1
#: And one client slot at each pooler instance (its admin console, read with SHOW POOLS).
POOLER_MONITOR_CONNECTIONS = 1

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


#: SQLAlchemy pools that make sense for a threaded sync engine.
PoolClass = Literal["QueuePool", "NullPool", "StaticPool", "SingletonThreadPool"]
Role = Literal["superuser", "app"]
Driver = Literal["psycopg2", "psycopg", "asyncpg"]
OnError = Literal["crash", "count"]
CleanupPolicy = Literal["ScaleDown", "Delete", "Keep"]
ReplicaCount = Annotated[int, Field(ge=1, le=500)]


Provider = Literal["rds", "azure", "cloudsql"]
#: RDS for PostgreSQL's default parameter group: LEAST({DBInstanceClassMemory/9531392}, 5000).
RDS_BYTES_PER_CONNECTION = 9531392
RDS_MAX = 5000
#: superuser_reserved_connections (3) + rds.rds_superuser_reserved_connections (2): a normal role gets 5 fewer.
RDS_RESERVED = 5
#: Azure Flexible Server's default max_connections by memory (GiB), from its published per-SKU table;
#: 48 GiB and more: 5000. 15 slots are reserved (reserved_connections 5 + superuser_reserved_connections 10).
AZURE_BY_MEMORY = {2: 50, 4: 429, 8: 859, 16: 1718, 32: 3437}
AZURE_RESERVED = 15
#: Cloud SQL for PostgreSQL's default max_connections by memory tier (GB, upper bound inclusive).
CLOUDSQL_TIERS = ((0.6, 25), (1.7, 50), (6.0, 100), (7.5, 200), (15.0, 400), (30.0, 500), (60.0, 600),
                  (120.0, 800))
CLOUDSQL_TOP = 1000
CLOUDSQL_RESERVED = 3  # PostgreSQL's superuser_reserved_connections default


class ProviderSpec(_Model):
    """A managed PostgreSQL whose defaults set the limits: max_connections by the provider's published
    formula or table, and the slots a normal role cannot take."""

    name: Provider = Field(..., description="rds (AWS RDS for PostgreSQL), azure (Flexible Server), cloudsql.")
    memory_gib: float = Field(
        ..., alias="memoryGiB", gt=0, le=4096,
        description="The instance's memory in GiB (RDS: DBInstanceClassMemory, which AWS gives as the class's"
        " memory minus an unpublished OS reserve: the nominal memory is an upper bound).",
    )

    @model_validator(mode="after")
    def _published(self) -> ProviderSpec:
        if self.name == "azure" and self.memory_gib < 48 and self.memory_gib not in AZURE_BY_MEMORY:
            raise ValueError(f"azure: no published default for {self.memory_gib:g} GiB (the table has"
                             f" {', '.join(str(m) for m in AZURE_BY_MEMORY)} and 48 or more)")
        return self

    def limits(self) -> tuple[int, int]:
        """(max_connections, slots reserved from a normal role)."""
        if self.name == "rds":
            return min(int(self.memory_gib * 2**30) // RDS_BYTES_PER_CONNECTION, RDS_MAX), RDS_RESERVED
        if self.name == "azure":
            return (5000 if self.memory_gib >= 48 else AZURE_BY_MEMORY[int(self.memory_gib)]), AZURE_RESERVED
        for top, connections in CLOUDSQL_TIERS:
            if self.memory_gib <= top:
                return connections, CLOUDSQL_RESERVED
        return CLOUDSQL_TOP, CLOUDSQL_RESERVED

    def source(self) -> str:
        return {
            "rds": f"RDS: LEAST(DBInstanceClassMemory/{RDS_BYTES_PER_CONNECTION}, {RDS_MAX}) with the nominal"
                   f" {self.memory_gib:g} GiB (an upper bound: AWS subtracts an unpublished OS reserve), {RDS_RESERVED}"
                   " reserved (3 superuser + 2 rds_superuser)",
            "azure": f"Azure Flexible Server's table for {self.memory_gib:g} GiB, {AZURE_RESERVED} reserved",
            "cloudsql": f"Cloud SQL's tier table for {self.memory_gib:g} GB, {CLOUDSQL_RESERVED} reserved"
                        " (check SHOW max_connections on the instance)",
        }[self.name]


class PostgresSpec(_Model):
    """The server under test. Limits become server arguments."""

    max_connections: int = Field(100, ge=2, le=10000, description="PostgreSQL max_connections.")
    superuser_reserved_connections: int = Field(
        3, ge=0, le=1000, description="Slots only superusers may take."
    )
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
        None, description="A managed PostgreSQL to mimic: fills maxConnections and superuserReservedConnections by"
        " the provider's published defaults (give neither of those then).",
    )

    @model_validator(mode="after")
    def _provider_fills_the_limits(self) -> PostgresSpec:
        if self.provider is None:
            return self
        given = [alias for name, alias in (("max_connections", "maxConnections"),
                                           ("superuser_reserved_connections", "superuserReservedConnections"))
                 if name in self.model_fields_set]
        if given:
            raise ValueError(f"{' and '.join(given)} cannot be given with provider: the provider's defaults fill them")
        self.max_connections, self.superuser_reserved_connections = self.provider.limits()
        return self

    @model_validator(mode="after")
    def _reserved_below_max(self) -> PostgresSpec:
        if self.superuser_reserved_connections >= self.max_connections:
            raise ValueError(
                "superuserReservedConnections must be less than maxConnections"
                f" ({self.superuser_reserved_connections} >= {self.max_connections})"
            )
        return self


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

    def effective_max_overflow(self) -> int:
        return 10 if self.max_overflow is None else self.max_overflow


class WorkloadSpec(_Model):
    """What each replica (one process or pod = one engine) does."""

    threads: int = Field(15, ge=1, le=500, description="Caller threads per worker process.")
    driver: Driver = Field(
        "psycopg2", description="psycopg2 (the seed's), psycopg (psycopg 3) or asyncpg (create_async_engine; threads"
        " are then concurrent tasks on one event loop per process).",
    )
    processes: int = Field(
        1, ge=1, le=64, description="Worker processes per replica (gunicorn/uvicorn workers), forked after the"
        " engine is configured; each opens its own pool.",
    )
    statement: str = Field(
        "SELECT pg_sleep(0.05)", min_length=1, max_length=10000, description="SQL run per iteration."
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
    on_error: OnError = Field(
        "crash", description="crash: the replica dies on the first error; count: keep going."
    )
    engine: EngineSpec = Field(default_factory=EngineSpec)

    @field_validator("statement")
    @classmethod
    def _statement_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("statement must not be blank")
        if "\x00" in value:
            raise ValueError("statement may not contain a NUL byte (PostgreSQL cannot take one)")
        return value

    @model_validator(mode="after")
    def _async_pools(self) -> WorkloadSpec:
        if self.driver == "asyncpg" and self.engine.pool_class not in ("QueuePool", "NullPool"):
            raise ValueError(f"driver asyncpg takes poolClass QueuePool (as AsyncAdaptedQueuePool) or NullPool,"
                             f" not {self.engine.pool_class}")
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


PoolMode = Literal["session", "transaction"]
#: A variant's name goes into child object names ("<benchmark>--<variant>-pgbouncer"), kept within 63.
MAX_VARIANT_NAME_LENGTH = 11
MAX_VARIANTS = 6


class PoolerSpec(_Model):
    """A PgBouncer in front of PostgreSQL for one variant. Defaults are PgBouncer's own."""

    type: Literal["PgBouncer"] = Field("PgBouncer", description="The pooler (PgBouncer only).")
    pool_mode: PoolMode = Field(
        "session", description="session: a client keeps its server connection until it disconnects;"
        " transaction: only for the length of a transaction."
    )
    default_pool_size: int = Field(
        20, ge=1, le=10000, description="Server connections per (database, user) pair, per pooler instance."
    )
    max_client_conn: int = Field(
        100, ge=1 + POOLER_MONITOR_CONNECTIONS, le=100000,
        description="Client connections each pooler instance accepts (the benchmark's monitor takes one of them).",
    )
    reserve_pool_size: int = Field(
        0, ge=0, le=10000, description="Extra server connections for a pool whose clients waited"
        " reserve_pool_timeout (5 s)."
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
        "ghcr.io/cloudnative-pg/pgbouncer:1.24.0", min_length=1,
        description="Container image with a pgbouncer binary on PATH (cluster only); it runs"
        " `pgbouncer /etc/poolbench-pgbouncer/pgbouncer.ini` from a generated Secret.",
    )
    run_as_user: int = Field(
        998, ge=1, le=2147483647,
        description="UID the pooler pod runs as: the image's pgbouncer user (998 in CloudNativePG's image;"
        " cluster only).",
    )

    def usable_clients(self) -> int:
        """Client connections the app may open at one instance: max_client_conn minus the monitor's."""
        return self.max_client_conn - POOLER_MONITOR_CONNECTIONS

    def server_connections(self) -> int:
        """Most server connections one instance opens to the database: pool plus reserve."""
        return self.default_pool_size + self.reserve_pool_size

    def label(self) -> str:
        return (f"PgBouncer {self.pool_mode}, pool {self.default_pool_size}"
                + (f"+{self.reserve_pool_size}" if self.reserve_pool_size else "")
                + (f" × {self.replicas} instances" if self.replicas > 1 else ""))


class VariantSpec(_Model):
    """One way of connecting, measured through the whole step plan: direct, or through a pooler,
    optionally with its own engine settings (NullPool behind a pooler, say)."""

    name: str = Field(..., min_length=1, max_length=MAX_VARIANT_NAME_LENGTH, pattern=NAME_PATTERN,
                      description="Short name (lowercase letters, digits, single '-'); part of child object names.")
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
        False, description="After the steps, measure a rolling update for real: the old replicas work while"
        " maxSurge new ones start, and the overlap's peak is set beside its prediction.",
    )
    replicas: ReplicaCount | None = Field(
        None, description="The replica count to roll (default: the largest count that passed).")

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
                raise ValueError(f"must be a count of pods (0 to 1000) or a percentage from '0%' to '1000%'"
                                 f" like '25%', not {value!r}")
            if int(value[:-1]) > 1000:
                raise ValueError(f"must be a percentage from '0%' to '1000%', not {value!r}")
            return value
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        raise ValueError(f"must be a whole count of pods (0 to 1000) or a percentage like '25%', not {shown}")


class PoolBenchmarkSpec(_Model):
    postgres: PostgresSpec = Field(default_factory=PostgresSpec)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    steps: Annotated[list[ReplicaCount], Field(min_length=1, max_length=50)] | StepSearch = Field(
        ..., description="Replica counts, run in order; or {search: {min, max}}: the largest passing count,"
        " found by bisection (each probe a real step from a clean slate).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    step_timeout_seconds: int = Field(300, ge=5, le=86400, description="Give up on a step after this long.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    stop_on_failure: bool = Field(True, description="Skip the remaining steps after a failed one.")
    cleanup: CleanupPolicy = Field(
        "ScaleDown", description="Cluster only: what to do with children when done."
    )
    rollout: RolloutSpec | None = Field(
        None, description="The app's rolling update (maxSurge): the verdict and `poolbench plan` also state the"
        " replicas that stay safe while old and new pods overlap.",
    )
    variants: list[VariantSpec] | None = Field(
        None, min_length=1, max_length=MAX_VARIANTS,
        description="Ways of connecting to compare, each run through every step against the same server"
        " (omitted: one direct variant).",
    )

    @property
    def search(self) -> SearchRange | None:
        return self.steps.search if isinstance(self.steps, StepSearch) else None

    def step_counts(self) -> list[int]:
        """The listed replica counts; for a search, its bounds (what the largest probe may be)."""
        return list(self.steps) if isinstance(self.steps, list) else [self.steps.search.min, self.steps.search.max]

    def describe_steps(self) -> str:
        search = self.search
        return f"search {search.min}..{search.max}" if search else f"steps {self.steps}"

    def effective_variants(self) -> list[VariantSpec]:
        """The variants to run, in order: ``spec.variants``, or the one direct variant."""
        return list(self.variants) if self.variants else [VariantSpec(name=DIRECT)]

    def for_variant(self, variant: VariantSpec) -> PoolBenchmarkSpec:
        """This spec as one variant sees it: its engine in place of ``workload.engine``."""
        if variant.engine is None:
            return self
        workload = self.workload.model_copy(update={"engine": variant.engine})
        return self.model_copy(update={"workload": workload})

    def usable_connections(self) -> int:
        """Slots the workload can take: max_connections, minus the reserved slots for a normal role,
        minus the benchmark's monitor."""
        pg = self.postgres
        reserved = pg.superuser_reserved_connections if self.workload.role == "app" else 0
        return pg.max_connections - reserved - MONITOR_CONNECTIONS


def contradictions(spec: PoolBenchmarkSpec) -> list[tuple[str, str]]:
    """What each field allows alone but the fields together make impossible, by field path: a
    benchmark that could never pass, or never measure, is refused before it starts."""
    problems = []
    w, pg = spec.workload, spec.postgres
    busy = w.hold_seconds + (w.duration_seconds or 0)
    if busy >= spec.step_timeout_seconds:
        what = "holdSeconds + durationSeconds" if w.duration_seconds else "holdSeconds"
        problems.append(("spec.workload.holdSeconds",
                         f"{what} ({busy:g}s) must be shorter than stepTimeoutSeconds"
                         f" ({spec.step_timeout_seconds}s): every step would time out"))
    reserved = pg.superuser_reserved_connections if w.role == "app" else 0
    if spec.usable_connections() <= 0:
        problems.append(("spec.postgres.maxConnections",
                         f"maxConnections {pg.max_connections} leaves no connection for the workload"
                         f" ({reserved} reserved for superusers, {MONITOR_CONNECTIONS} for the benchmark's"
                         " monitor)"))
    seen: dict[str, int] = {}
    shapes: dict[str, int] = {}
    for i, variant in enumerate(spec.variants or []):
        if variant.name in seen:
            problems.append((f"spec.variants[{i}].name",
                             f"duplicate variant name {variant.name!r} (also spec.variants[{seen[variant.name]}])"))
        seen.setdefault(variant.name, i)
        # The same pooler and engine as an earlier variant: a copy-paste slip that would measure nothing new.
        engine = variant.engine or spec.workload.engine
        shape = repr((variant.pooler.model_dump() if variant.pooler else None, engine.model_dump()))
        if shape in shapes:
            problems.append((f"spec.variants[{i}]", f"measures the same pooler and engine as"
                                                    f" spec.variants[{shapes[shape]}]"))
        shapes.setdefault(shape, i)
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
            loc = loc[:tag] + loc[tag + 1:]
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


def parse_document(doc: Any) -> PoolBenchmark:
    """Validate a whole PoolBenchmark document (a parsed YAML mapping)."""
    if not isinstance(doc, dict):
        raise SpecError([("", f"expected a mapping (a PoolBenchmark document), got {type(doc).__name__}")])
    try:
        bench = PoolBenchmark.model_validate(doc)
    except ValidationError as err:
        raise SpecError(_problems(err)) from None
    problems = contradictions(bench.spec)
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
                problems.append((where, f"duplicate key (line {key_node.start_mark.line + 1}):"
                                        " YAML would silently keep only the last value"))
            seen.add(key)
            problems += _duplicate_keys(value_node, where, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]", seen_nodes)
    return problems


def load_text(text: str) -> PoolBenchmark:
    """Parse YAML text holding exactly one PoolBenchmark."""
    try:
        duplicates = [p for node in yaml.compose_all(text, Loader=yaml.SafeLoader) for p in _duplicate_keys(node)]
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError([("", f"not valid YAML: {err}")]) from None
    if duplicates:
        raise SpecError(duplicates)
    if len(docs) != 1:
        raise SpecError([("", f"expected exactly one YAML document, found {len(docs)}")])
    return parse_document(docs[0])
