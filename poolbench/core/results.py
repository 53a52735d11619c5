"""The results shape: the CLI's JSON and the custom resource's ``status`` (the same keys).

The CRD's status schema is generated from these models, so every field kopf patches is declared
and nothing is pruned by the API server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

from .histogram import Histogram, plain_number
from .outcomes import OK, OUTCOMES
from .spec import EngineSpec, PoolerSpec

#: BoundaryFound: a search ended as it should, with adjacent counts in its range (one passing, one failing).
Phase = Literal["Pending", "Provisioning", "Running", "Completed", "BoundaryFound", "Failed", "Invalid"]
#: The phases a benchmark ends in: nothing more is measured.
TERMINAL_PHASES = ("Completed", "BoundaryFound", "Failed", "Invalid")
#: Inconclusive: the monitor lost most of the step's reads, so nothing it measured can be trusted.
Outcome = Literal["Passed", "Failed", "Inconclusive"]
#: Failed-attempt classes, in order of significance (slot exhaustion first), from ``outcomes``.
ERROR_CLASSES = tuple(outcome for outcome in OUTCOMES if outcome != OK)


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class PeakByState(_Out):
    active: int = 0
    idle: int = 0
    idle_in_transaction: int = 0


class ErrorCounts(_Out):
    """Failed attempts by class. tooManyClients and reservedSlots are SQLSTATE 53300; the pooler*
    classes are PgBouncer's refusals (and, behind it, the server refusing the pooler's login);
    preparedStatementClash is a driver setting (server-side prepared statements behind transaction pooling)."""

    too_many_clients: int = 0
    reserved_slots: int = 0
    pooler_max_client_conn: int = 0
    pooler_server_login: int = 0
    pooler_query_wait_timeout: int = 0
    pool_timeout: int = 0
    prepared_statement_clash: int = 0
    other: int = 0

    def total(self) -> int:
        return sum(getattr(self, to_snake(key)) for key in ERROR_CLASSES)

    def first_class(self) -> str | None:
        """The most significant error class seen (slot exhaustion first)."""
        for key in ERROR_CLASSES:
            if getattr(self, to_snake(key)):
                return key
        return None

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            if key in ERROR_CLASSES:
                attr = to_snake(key)
                setattr(self, attr, getattr(self, attr) + int(value))


def to_snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


class Percentiles(_Out):
    """Milliseconds, read from the step's histogram: each percentile within 2 % of the true
    nearest-rank value (``poolbench.core.histogram.RELATIVE_ERROR``)."""

    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    mean: float = Field(0.0, description="Exact (sum ÷ count), not from the buckets.")


class AgeStats(_Out):
    """Seconds; null when no age was read (the work never ended, or no backend was open then)."""

    p50: float | None = None
    max: float | None = None


class HistogramCounts(_Out):
    """Counts of the non-empty buckets and of the limits' buckets, exactly the sum of the replicas' own.
    Bucket edges: sixty per decade from 0.001 ms plus spec.limits; a bucket holds the values above the
    edge before its bound, up to its bound. Written and read only through ``Histogram``'s own form."""

    buckets: str = Field(
        "",
        description="Each listed bucket as boundMs:count (its upper bound in ms, the values in it), separated"
        " by spaces, ascending: '0.5179:3 1.1:10 250:0'.",
    )
    sum_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, histogram: Histogram) -> HistogramCounts:
        return cls.model_validate(histogram.to_json())

    def histogram(self) -> Histogram:
        """The counts back as a ``Histogram`` on the same edges (empty when ``buckets`` is malformed)."""
        return Histogram.from_json(self.model_dump(by_alias=True))


#: ``metadata.generation`` as a status saw it. A benchmark with no resource behind it (the CLI's run) has
#: none: the key is then left out, never written as null, and the CRD declares it a plain integer (the
#: API server drops a null written there): kstatus (Flux, kpt) cannot read a null and fails the object.
ObservedGeneration = int | SkipJsonSchema[None]


class _ObservesGeneration(_Out):
    """A model with an ``observed_generation: ObservedGeneration`` field: dumped without the key while it
    is None."""

    @model_serializer(mode="wrap")
    def _without_unobserved_generation(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("observedGeneration", "observed_generation"):
            if key in data and data[key] is None:
                del data[key]
        return data


class Condition(_ObservesGeneration):
    """A Kubernetes API convention condition (kstatus: Ready, Reconciling, Stalled)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: ObservedGeneration = None


class RolloutOverlap(_Out):
    """Whether a measured rolling update's old and new replicas held their connections at once, as
    in a real one (old pods serve until the new ones are Ready)."""

    achieved: bool
    measured_by: Literal["applicationName", "workTimes"] = Field(
        description="applicationName: the server's backends per replica name (direct); workTimes: the replicas'"
        " own work start and end times (pooled: the server's backends are the poolers')."
    )
    old_connections: int = Field(0, description="Most connections the old replicas held in one read.")
    old_connections_at_surge_peak: int = Field(
        0, description="The old replicas' connections in the read where the surge pods held the most."
    )
    surge_peak_connections: int = Field(0, description="Most connections the surge pods held in one read.")
    detail: str = ""


class GhostConnection(_Out):
    """One connection open when the work ended, from the server's log: whose, and how old. In the
    status it is one line, ``"PID REPLICA AGEs"`` (``to_text``, ``from_text``)."""

    pid: int
    replica: str = Field(description="Its application_name: the replica that opened it.")
    age_seconds: float = Field(description="Seconds it had been open when the work ended.")

    def to_text(self) -> str:
        replica = "".join(c if c.isprintable() else "?" for c in self.replica)
        return f"{self.pid} {replica} {plain_number(self.age_seconds)}s"

    @classmethod
    def from_text(cls, text: str) -> GhostConnection:
        """``to_text``'s line back (the replica may hold spaces); ValueError when it is not one."""
        pid, _, rest = text.partition(" ")
        replica, _, age = rest.rpartition(" ")
        if not age.endswith("s"):
            raise ValueError(f"ghost connection {text!r} is not 'PID REPLICA AGEs'")
        return cls(pid=int(pid), replica=replica, age_seconds=float(age[:-1]))


def parse_ghosts(lines: object) -> list[GhostConnection]:
    """Ghost connection lines (``GhostConnection.to_text``) read back; anything that is not one is left out."""
    out = []
    for line in lines if isinstance(lines, list) else []:
        try:
            out.append(GhostConnection.from_text(line))
        except (TypeError, ValueError, AttributeError):
            continue
    return out


class PoolerStepResult(_Out):
    """A pooled step at the poolers: what the arithmetic predicted beside what their admin consoles showed."""

    predicted_client_peak: int = Field(0, description="Client connections the engines may open at the pooler.")
    client_capacity: int = Field(0, description="Client connections the poolers accept (maxClientConn × instances).")
    server_capacity: int = Field(
        0, description="Most server connections the poolers open (instances × (defaultPoolSize + reservePoolSize))."
    )
    predicted_outcome: str = Field(
        "",
        description="What the arithmetic expects at the poolers for this step: fits, waits (session mode:"
        " clients queue for a server connection, then run) or fails (connections placed on the instances at"
        " random, as through a Service).",
    )
    client_peak_connections: int = Field(0, description="Peak clients at the pooler (cl_active + cl_waiting).")
    waiting_peak: int = Field(0, description="Peak clients waiting for a server connection (cl_waiting).")
    max_wait_ms: float = Field(0.0, description="Longest wait of a queued client seen (SHOW POOLS maxwait).")
    sample_gaps: int = Field(0, description="Admin-console reads that failed.")


class StepResult(_Out):
    replicas: int
    started_at: str | None = None
    finished_at: str | None = None
    predicted_peak: int = 0
    predicted_idle: int = Field(0, description="Predicted ghosts: idle connections kept by the pools.")
    usable_connections: int = Field(0, description="Slots the workload's role may use (minus the monitor).")
    peak_connections: int = Field(
        0,
        description="The exact peak of open client backends from the server's log (peakSource serverLog),"
        " else the sampled peak.",
    )
    peak_source: Literal["serverLog", "sampled"] = Field(
        "sampled", description="serverLog: every connection's open and close in the server's log; sampled: reads."
    )
    peak_source_reason: str | None = Field(None, description="Why the peak is the sampled one.")
    sampled_peak_connections: int = Field(0, description="The most client backends one pg_stat_activity read saw.")
    peak_at_seconds: float | None = Field(
        None, description="Seconds from the step's start to the moment the exact peak was first reached."
    )
    first_refusal_at: str | None = Field(None, description="The server's first refusal for want of a slot.")
    refusals: int = Field(0, description="Connections the server refused for want of a slot (SQLSTATE 53300).")
    refusals_per_second: float = Field(0.0, description="refusals ÷ the step's duration.")
    refusals_by_class: dict[str, int] = Field(
        default_factory=dict,
        description="tooManyClients, reservedSlots, roleConnectionLimit, databaseConnectionLimit: from the server's"
        " wording.",
    )
    server_ghosts: int | None = Field(
        None, description="Connections open when the work ended, from the server's log (null: not read)."
    )
    ghost_connections: list[str] = Field(
        default_factory=list,
        description="The oldest of them (at most 50), one line each: its pid, its replica (application_name) and"
        " its age in seconds ('4242 pb-seed-s1-r0 12.5s').",
    )
    exiting_at_peak: int = Field(
        0,
        description="Of the exact peak, backends whose replica already held as many newer ones as it may open:"
        " closed by their client and still exiting (they ended within a second).",
    )
    server_ended_connections: int = Field(
        0,
        description="Of the workload's connections in the server's log, those the server ended itself during the"
        " step (a FATAL error: terminated, timed out; a crash or a restart): a pool counts one open until it next"
        " uses it.",
    )
    witness_disagreement: str | None = Field(
        None,
        description="The witnesses (the server's log, the reads, the pools' own events) disagree beyond what"
        " their timing explains.",
    )
    peak_by_state: PeakByState = Field(default_factory=PeakByState)
    peak_by_replica: dict[str, int] = Field(default_factory=dict)
    idle_at_end: int = Field(0, description="Ghosts: idle connections open when the work ended.")
    oldest_idle_seconds: float = 0.0
    queries: int = Field(0, description="Statements that succeeded.")
    errors: ErrorCounts = Field(default_factory=ErrorCounts)
    first_error: str | None = None
    first_error_class: str | None = Field(None, description="Class of the earliest failed attempt.")
    restarts: int = 0
    crashed_replicas: int = 0
    samples: int = 0
    sample_gaps: int = Field(0, description="Probe reads that failed; never silent.")
    sample_interval_p99_ms: float | None = Field(
        None,
        description="The p99 time between two consecutive reads of the step (null: fewer than two reads). Above"
        " 1.5 × spec.sampling.intervalMs the reads fell behind: one read took longer than the interval.",
    )
    monitor_error: str | None = Field(None, description="Why the last failed probe read failed.")
    database_restarts: int = Field(0, description="Times the server restarted during the step.")
    leftover_backends: int = Field(
        0, description="Backends still open after the step's replicas were gone, terminated before the next step."
    )
    timed_out: bool = False
    throughput: float = Field(0.0, description="Successful statements per second over the step's work phase.")
    latency_ms: Percentiles = Field(
        default_factory=Percentiles, description="Statement latency, from the checkout request to the commit."
    )
    checkout_wait_ms: Percentiles = Field(
        default_factory=Percentiles, description="Time waiting for a connection from the pool (connect included)."
    )
    latency_histogram: HistogramCounts = Field(default_factory=HistogramCounts)
    checkout_wait_histogram: HistogramCounts = Field(default_factory=HistogramCounts)
    peak_by_wait_event_type: dict[str, int] = Field(
        default_factory=dict, description="Peak workload backends per pg_stat_activity wait_event_type."
    )
    connection_age_seconds: AgeStats = Field(
        default_factory=AgeStats, description="Age (backend_start) of the workload's backends when the work ended."
    )
    rollout_from: int | None = Field(
        None,
        description="A rolling update: this many old replicas were working when the new ones (the rest of"
        " ``replicas``) started.",
    )
    rollout_overlap: RolloutOverlap | None = Field(
        None, description="A rolling update: whether its old and surge replicas held connections at once."
    )
    pooler: PoolerStepResult | None = Field(
        None,
        description="Pooled: the workload connected through a pooler; peaks count server backends (the"
        " pooler's), ghosts are the app's idle connections at the pooler. Null for a direct step.",
    )
    server_idle_at_end: int = Field(0, description="Idle server backends when the work ended (pooled: the pooler's).")
    client_peak_connections: int | None = Field(
        None,
        description="Most real connections the replicas' pools held open at once (their pools' connect and close"
        " events, summed over the replicas by time; pooled: connections to the pooler). Null when a replica did"
        " not report its pool.",
    )
    client_peak_exact: bool | None = Field(
        None,
        description="True: clientPeakConnections is exact; false: an upper bound (a replica's timeline was coarsened"
        " into time buckets to fit its summary, or it reported only its own maximum).",
    )
    client_peak_at: str | None = Field(
        None, description="When the client peak was first reached (coarsened: the start of its time bucket)."
    )
    client_connects: int | None = Field(None, description="Real connections the replicas' pools opened (exact).")
    images: dict[str, str] = Field(
        default_factory=dict,
        description="Container name (postgres, pgbouncer, workload) → the digest of the image that ran it in the"
        " step, from the pods' status.containerStatuses[].imageID. Empty for a local run.",
    )
    outcome: Outcome | None = None
    reason: str | None = None

    def ghosts(self) -> list[GhostConnection]:
        """``ghostConnections`` read back."""
        return parse_ghosts(self.ghost_connections)


class Verdict(_Out):
    max_safe_replicas: int | None = None
    first_failing_replicas: int | None = None
    predicted_max_safe_replicas: int | None = Field(
        None, description="What the pool arithmetic predicted maxSafeReplicas to be (beside what was found)."
    )
    reason: str = ""
    summary: str = ""


#: What the compatibility probe can find: session state that one client of a pooled server connection
#: leaves to another, or loses between its own transactions.
FindingKind = Literal[
    "sessionSettingLeaked",
    "sessionSettingLost",
    "preparedStatementDuplicated",
    "preparedStatementMissing",
    "advisoryLockHeld",
    "listenLost",
    "tempTableShared",
    "holdCursorShared",
]


class CompatibilityFinding(_Out):
    """One way the app's statements misbehave through this pooler, as the server showed it."""

    kind: FindingKind
    statement: str = Field("", description="The app's statement that caused it (empty: the driver's own).")
    evidence: str = Field(description="What the server showed: which backend, which client saw what.")
    fix: str = Field(description="What to change so the finding goes away.")
    breaks_correctness: bool = Field(
        True, description="The app would read or do something it did not mean (not only waste server memory)."
    )


class Compatibility(_Out):
    """The app's statements run from several clients through the variant's pooler, before the load."""

    pool_mode: str = ""
    findings: list[CompatibilityFinding] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list, description="What the probe could not check, and why (never a finding)."
    )


class VariantStatus(_Out):
    """One variant's run through the step plan (``status.variants[]``)."""

    name: str
    pooler: PoolerSpec | None = None
    engine: EngineSpec = Field(default_factory=EngineSpec)
    steps: list[StepResult] = Field(default_factory=list)
    verdict: Verdict | None = None
    compatibility: Compatibility | None = Field(
        None,
        description="Pooled: the compatibility probe's findings (null: not probed, a direct variant).",
    )


# -- the user's own app against the user's own server (spec.database + spec.target) -------------------


class DatabaseStatus(_Out):
    """The user's server as the monitor read it at the start (its limits are never taken from the spec)."""

    host: str
    port: int
    dbname: str
    monitor_role: str = Field("", description="The role the monitor logs in as (from the Secret; never its password).")
    server_version_num: int = 0
    max_connections: int = 0
    superuser_reserved_connections: int = 0
    reserved_connections: int = Field(0, description="PostgreSQL 16+ reserved_connections (0 before).")
    usable_for_normal_role: int = Field(
        0, description="maxConnections - superuserReservedConnections - reservedConnections."
    )


class PodPeakStatus(_Out):
    peak_connections: int = 0
    kept_idle_peak: int = Field(0, description="Most idle (kept by the pool) backends of the pod in one read.")
    oldest_backend_age_seconds: float = 0.0


class OwnerPeakStatus(_Out):
    """Another tenant's backends: its role and application_name, and their peak."""

    usename: str
    application_name: str
    peak: int


class SeriesPointStatus(_Out):
    """Reads merged into one point: the first read's time (seconds), the least headroom, the most replicas."""

    t: float
    headroom: int
    replicas: int | None = None


class ObservationStatus(_Out):
    """A watch of the live server: the app's backends by pod, the other tenants', the least headroom."""

    reads: int = 0
    duration_seconds: float = 0.0
    usable: int | None = None
    pods: dict[str, PodPeakStatus] = Field(default_factory=dict, description="Per app pod (by name).")
    per_pod_peak: int = Field(0, description="The most backends one pod held at once.")
    per_pod_kept_idle_peak: int = 0
    app_peak: int = Field(0, description="The most backends of the app (every pod's and the matched ones).")
    unplaced_peak: int = Field(0, description="Of them, matched by spec.target.match but from no pod's IP.")
    others_peak: int = 0
    others_peak_by_owner: list[OwnerPeakStatus] = Field(default_factory=list)
    min_headroom: int | None = Field(None, description="The fewest usable slots left in one read.")
    series: list[SeriesPointStatus] = Field(default_factory=list, description="Headroom and replicas over time.")


class PoolsComparisonStatus(_Out):
    """spec.target.pools: the per-pod connections the pools' settings allow (the built-in workload's
    arithmetic) beside the ones measured."""

    predicted_per_pod: int = Field(0, description="The most connections a pod's pools may open.")
    predicted_kept_idle_per_pod: int = Field(
        0, description="Connections a pod's pools keep open and idle after a burst (their ghosts)."
    )
    measured_per_pod: int = Field(0, description="The most backends one pod held at once (perPodPeak).")
    measured_kept_idle_per_pod: int = Field(
        0,
        description="The most idle backends of one pod in one read (perPodKeptIdlePeak; under load a"
        " connection between two requests is idle too, so it may exceed the kept ones).",
    )
    over_predicted: bool = Field(
        False,
        description="A pod held more than its pools allow: a pool setting is not what spec.target.pools"
        " says, or a process has more than one engine.",
    )
    words: str = ""


class AnswerStatus(_Out):
    """How many replicas fit, from the measured per-pod peak (``budget.own_app_answer``)."""

    per_pod: int = 0
    per_pod_from: Literal["measured", "predicted"] = Field(
        "measured",
        description="measured; predicted (by spec.target.pools) when no connection of a pod was measured.",
    )
    usable: int = 0
    others: int = 0
    available: int = 0
    safe_at_rest: int = 0
    safe_in_rollout: int = 0
    max_surge: int | str | None = Field(None, json_schema_extra={"x-kubernetes-int-or-string": True})
    hpa_max: int | None = None
    replicas: int | None = None
    needed_at_hpa_max: int | None = None
    refusals_from: int = 0


class PodHealth(_Out):
    """An app pod's container restarts during the benchmark and its last termination (a refused app crashes)."""

    restarts: int = 0
    last_termination_reason: str | None = None
    last_termination_message: str | None = None


class OwnStepResult(_Out):
    """One replica count of the user's Deployment, held once its pods were ready."""

    replicas: int
    started_at: str | None = None
    finished_at: str | None = None
    ready_replicas: int = Field(0, description="Ready pods seen (the hold starts when all are).")
    ready: bool = Field(False, description="All replicas were ready within stepTimeoutSeconds.")
    load_job: str | None = Field(None, description="The load Job run during the hold (deleted after it).")
    stopped: bool = Field(False, description="Stopped by spec.safety.stopAtUsedFraction.")
    stop_reason: str | None = None
    observation: ObservationStatus = Field(default_factory=ObservationStatus)
    pools: PoolsComparisonStatus | None = Field(
        None, description="spec.target.pools: predicted beside measured, per pod, in this step."
    )


class TargetStatus(_Out):
    """The user's Deployment: what poolbench saw of it, changed on it and put back."""

    deployment: str
    mode: Literal["Observe", "Step"]
    original_replicas: int | None = Field(
        None, description="Step: the replica count before the first scale, recorded before it; put back at the end."
    )
    restored: bool = Field(False, description="The Deployment was read back with originalReplicas.")
    restore_message: str | None = None
    max_surge: int | str | None = Field(
        None,
        description="The Deployment's RollingUpdate maxSurge (null: Recreate).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    hpa: str | None = Field(None, description="The HorizontalPodAutoscaler that targets the Deployment, if any.")
    hpa_max_replicas: int | None = None
    warnings: list[str] = Field(default_factory=list)
    replicas_over_time: list[SeriesPointStatus] = Field(
        default_factory=list, description="The Deployment's replica count and the headroom, over time."
    )
    observation: ObservationStatus | None = Field(None, description="Observe: the whole watch.")
    observe_started_at: str | None = Field(
        None, description="Observe: when the watch began (an operator restarted during it goes on to its end)."
    )
    pod_health: dict[str, PodHealth] = Field(default_factory=dict, description="Per app pod that restarted.")
    steps: list[OwnStepResult] = Field(default_factory=list, description="Step: one per replica count, in order.")
    stopped_at_step: int | None = Field(None, description="Step: the step (1-based) the safety stop ended.")
    sample_gaps: int = Field(0, description="Reads of the server that failed; never silent.")
    monitor_error: str | None = Field(None, description="Why the last failed read failed.")
    pools: PoolsComparisonStatus | None = Field(
        None, description="spec.target.pools: predicted beside measured, per pod, over the whole run."
    )
    answer: AnswerStatus | None = None
    answer_words: str = ""


class BenchmarkStatus(_ObservesGeneration):
    phase: Phase = "Pending"
    message: str = ""
    current_step: int = 0
    total_steps: int = 0
    progress: str = Field("", description="Current step as n/m (for kubectl's Step column).")
    replicas: int = 0
    max_connections: int = 0
    peak_connections: int = 0
    failures: int = 0
    live_connections: int = 0
    verdict: Verdict | None = Field(
        None,
        description="The first variant's (the one of a benchmark without"
        " spec.variants): what the printer columns show.",
    )
    short_verdict: str = Field(
        "",
        description="The verdict in a few words for kubectl's Verdict column ('safe 2, fails at 8:"
        " tooManyClients'); the whole sentence is verdict.summary.",
    )
    observed_generation: ObservedGeneration = None
    updated_at: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    current_variant: str = Field("", description="The variant being measured (with spec.variants).")
    variants: list[VariantStatus] = Field(
        default_factory=list,
        description="Per variant, in order: spec.variants, or the one direct variant of a benchmark without them.",
    )
    comparison: str = Field("", description="The variants side by side, in one sentence (with spec.variants).")
    database: DatabaseStatus | None = Field(None, description="spec.database: the server as read live.")
    target: TargetStatus | None = Field(None, description="spec.target: the user's Deployment.")
    results_config_map: str = Field(
        "",
        description="The ConfigMap (key status.json) holding the whole status: each step's detail (latencies,"
        " histograms, per-replica peaks, ghosts, images ...) beside the summary kept here.",
    )

    def all_steps(self) -> list[StepResult]:
        """Every variant's steps, in the order they ran."""
        return [s for v in self.variants for s in v.steps]

    def to_json(self) -> dict[str, Any]:
        """The status as written (the resource's ``status``, the CLI's JSON): a field at its default (zero,
        empty, null) is left out, so ``kubectl describe`` shows what was measured; the printer columns'
        counters are always there. Reading it back with the model gives the same status."""
        written = self.model_dump(by_alias=True, mode="json", exclude_defaults=True)
        full = self.full_json()
        return {**{key: full[key] for key in ALWAYS_WRITTEN}, **written}

    def full_json(self) -> dict[str, Any]:
        """Every field, at its default where nothing was written: what the tables and the report read."""
        return self.model_dump(by_alias=True, mode="json")

    def summary_json(self) -> dict[str, Any]:
        """What the resource's status holds: ``to_json`` with each step cut to its summary (the whole
        status is in the results ConfigMap, ``resultsConfigMap``)."""
        return lean_status(self.to_json())

    def merge_patch(self, written: Mapping[str, Any] | None) -> dict[str, Any]:
        """A JSON merge patch from the resource's status last ``written`` to this one's summary, with
        every field it no longer has set to null (a merge patch keeps what it does not name). Only the
        status' own fields are nulled, never another writer's keys."""
        known = {field.alias or name for name, field in BenchmarkStatus.model_fields.items()}
        before = {k: v for k, v in (written or {}).items() if k in known}
        return nulled_where_gone(before, self.summary_json())


#: Top-level status fields written even at their default: the printer columns' counters and the step counter.
ALWAYS_WRITTEN = ("phase", "currentStep", "totalSteps", "replicas", "maxConnections", "peakConnections", "failures")


def nulled_where_gone(before: Mapping[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` with null for every key of ``before`` it lacks, in nested objects too (lists are
    replaced whole by a merge patch, so nothing inside one is nulled)."""
    patch = dict(after)
    for key, old in before.items():
        if key not in after:
            patch[key] = None
        elif isinstance(old, Mapping) and isinstance(after[key], dict):
            patch[key] = nulled_where_gone(old, after[key])
    return patch


#: The results ConfigMap's key holding the whole status as JSON (written by the operator, read by the
#: kubectl plugin and the tests).
RESULTS_KEY = "status.json"

#: The fields of a step the resource's status keeps (its summary); the rest of a step is its detail,
#: kept in the results ConfigMap (``status.resultsConfigMap``) so ``kubectl describe`` stays short.
STEP_SUMMARY_FIELDS = (
    "replicas",
    "startedAt",
    "finishedAt",
    "predictedPeak",
    "predictedIdle",
    "usableConnections",
    "peakConnections",
    "peakSource",
    "idleAtEnd",
    "serverGhosts",
    "queries",
    "throughput",
    "errors",
    "firstError",
    "firstErrorClass",
    "firstRefusalAt",
    "refusals",
    "refusalsByClass",
    "restarts",
    "crashedReplicas",
    "timedOut",
    "rolloutFrom",
    "outcome",
    "reason",
)


def _map_steps(status: Mapping[str, Any], change: Any) -> dict[str, Any]:
    """``status`` with ``change(variant_index, step_index, step)`` in place of each step."""
    out = dict(status)
    if isinstance(status.get("variants"), list):
        out["variants"] = [
            {**variant, "steps": [change(i, j, step) for j, step in enumerate(variant["steps"])]}
            if isinstance(variant, Mapping) and isinstance(variant.get("steps"), list)
            else variant
            for i, variant in enumerate(status["variants"])
        ]
    return out


def lean_status(full: Mapping[str, Any]) -> dict[str, Any]:
    """The status the resource keeps: ``full`` with each step cut to its summary (STEP_SUMMARY_FIELDS)."""
    return _map_steps(
        full,
        lambda _i, _j, step: (
            {k: v for k, v in step.items() if k in STEP_SUMMARY_FIELDS} if isinstance(step, Mapping) else step
        ),
    )


def join_status(summary: Mapping[str, Any], full: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole status from the resource's ``summary`` and the results ConfigMap's copy (``full``): the
    summary is authoritative; the copy gives only the detail of steps the summary has finished (same
    variant, position, replicas and start). So ``join_status(lean_status(x), x) == x``, and a copy that
    lags behind or is missing only leaves detail out."""
    variants = (full or {}).get("variants")
    copies = variants if isinstance(variants, list) else []

    def joined(i: int, j: int, step: Any) -> Any:
        if not isinstance(step, Mapping) or step.get("outcome") is None or i >= len(copies):
            return step
        variant = summary["variants"][i]
        steps = copies[i].get("steps") if isinstance(copies[i], Mapping) else None
        if copies[i].get("name") != variant.get("name") or not isinstance(steps, list) or j >= len(steps):
            return step
        copy = steps[j]
        same = isinstance(copy, Mapping) and all(copy.get(k) == step.get(k) for k in ("replicas", "startedAt"))
        if not same:
            return step
        detail = {k: v for k, v in copy.items() if k not in STEP_SUMMARY_FIELDS}
        return {**step, **detail}

    return _map_steps(summary, joined)


def join_saved(summary: Mapping[str, Any], saved: str | None) -> dict[str, Any]:
    """``join_status`` with the results ConfigMap's text (None: not there or not readable); a text that
    is not a JSON object adds no detail."""
    try:
        full = json.loads(saved) if saved else None
    except ValueError:
        full = None
    return join_status(summary, full if isinstance(full, dict) else None)
