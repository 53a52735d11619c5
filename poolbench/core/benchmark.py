"""The benchmark's state machine, shared by the local runner and the operator (pure, no I/O).

The step loop (``steploop``) feeds it what the platform saw (samples, replica reports); this
module turns that into the status: step plan, per-step results, phase and verdict. Because the
status is the whole state, a run can resume from it (the operator after a restart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from .budget import predict, predicted_safe_replicas, surge_pods
from .client_timeline import OpenTimeline, iso_utc, merge_open_timelines
from .contracts.phases import CRASHED
from .contracts.summary import ReplicaSummary
from .histogram import Histogram, merged
from .outcomes import OK
from .results import (
    TERMINAL_PHASES,
    AgeStats,
    BenchmarkStatus,
    Compatibility,
    Condition,
    ErrorCounts,
    HistogramCounts,
    Percentiles,
    Phase,
    PoolerStepResult,
    RolloutOverlap,
    StepResult,
    VariantStatus,
)
from .sampling import Sample, StepAccumulator
from .search import found, most_probes, next_probe
from .spec import DIRECT, PoolBenchmarkSpec, PoolerSpec, VariantSpec
from .timeline import WindowAccount
from .verdict import (
    apply_client_witness,
    apply_server_account,
    comparison,
    judge_rollout_overlap,
    judge_step,
    largest_safe,
    overall_verdict,
    short_verdict,
)
from .words import counted

#: The wall clock the status is stamped with (RFC 3339, UTC), passed in by the platform: the core
#: never reads it itself.
Clock = Callable[[], str]


@dataclass(frozen=True)
class PlannedStep:
    index: int  # 1-based within its variant, as shown to users
    replicas: int
    predicted_peak: int  # server backends (pooled: what the poolers open for the clients)
    predicted_idle: int  # ghosts: the app pools' idle connections (pooled: at the pooler)
    usable: int
    variant: str = DIRECT
    variant_index: int = 0
    position: int = 1  # 1-based over every variant's planned steps
    tag: str = ""  # the variant's name in messages and replica names (``PoolBenchmarkSpec.variant_tag``)
    pooler: PoolerSpec | None = None
    predicted_client_peak: int = 0  # pooled: clients at the pooler
    client_capacity: int = 0
    server_capacity: int = 0
    pooled_outcome: str = ""  # pooled: what the arithmetic expects at the poolers (fits, waits, fails)
    rollout_from: int | None = None  # a rolling update: old replicas first, then the surge pods beside them

    @property
    def label(self) -> str:
        """How messages name the step: ``step 2`` or, with variants, ``tx step 2``."""
        return f"{self.tag} step {self.index}" if self.tag else f"step {self.index}"

    def pooler_result(self) -> PoolerStepResult | None:
        """The pooled step's predictions, to be measured beside (None for a direct step)."""
        if self.pooler is None:
            return None
        return PoolerStepResult(
            predicted_client_peak=self.predicted_client_peak,
            client_capacity=self.client_capacity,
            server_capacity=self.server_capacity,
            predicted_outcome=self.pooled_outcome,
        )


def planned_step(
    spec: PoolBenchmarkSpec, variant: VariantSpec, variant_index: int, index: int, replicas: int, offset: int
) -> PlannedStep:
    """One step of one variant with its predictions. ``offset``: steps planned before this variant's."""
    pooler = variant.pooler
    p = predict(spec.for_variant(variant), replicas, pooler)
    return PlannedStep(
        index,
        replicas,
        p.peak,
        p.idle,
        p.usable,
        variant=variant.name,
        variant_index=variant_index,
        position=offset + index,
        tag=spec.variant_tag(variant),
        pooler=pooler,
        predicted_client_peak=p.client_peak if pooler else 0,
        client_capacity=p.client_capacity,
        server_capacity=p.server_capacity,
        pooled_outcome=p.check.outcome if pooler else "",
    )


def plan_steps(
    spec: PoolBenchmarkSpec, variant: VariantSpec | None = None, variant_index: int = 0, offset: int = 0
) -> list[PlannedStep]:
    """One variant's listed steps (the first variant's by default); a search has no list: its probes
    are chosen as it goes (``search.next_probe``)."""
    variant = variant or spec.effective_variants()[0]
    return [
        planned_step(spec, variant, variant_index, i, replicas, offset)
        for i, replicas in enumerate(spec.steps if isinstance(spec.steps, list) else [], start=1)
    ]


@dataclass
class ReplicaReport:
    """What one replica said about itself (its summary) plus what the platform saw."""

    name: str
    outcomes: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    first_error_class: str | None = None
    first_error_at: float | None = None
    crashed: bool = False
    restarts: int = 0
    latency: Histogram = field(default_factory=Histogram)  # successful statements, checkout to commit
    checkout_wait: Histogram = field(default_factory=Histogram)  # every checkout (or failed one)
    work_started_at: float | None = None  # epoch seconds: the replica's first attempt
    work_ended_at: float | None = None  # epoch seconds: its last caller thread finished
    connections: OpenTimeline | None = None  # its pools' real connections over time; None: not said

    @classmethod
    def from_summary(
        cls, name: str, summary: ReplicaSummary | None, *, exit_code: int | None = None, restarts: int = 0
    ) -> ReplicaReport:
        summary = summary if summary is not None else ReplicaSummary()
        return cls(
            name=name,
            outcomes=dict(summary.outcomes),
            first_error=summary.first_error,
            first_error_class=summary.first_error_class,
            first_error_at=summary.first_error_at,
            crashed=summary.phase == CRASHED or bool(exit_code),
            restarts=restarts,
            latency=summary.latency,
            checkout_wait=summary.checkout_wait,
            work_started_at=summary.work_started_at,
            work_ended_at=summary.work_ended_at,
            connections=summary.connections,
        )


def aggregate_reports(step: StepResult, reports: list[ReplicaReport]) -> StepResult:
    errors = ErrorCounts()
    for r in reports:
        errors.add(r.outcomes)
        step.queries += int(r.outcomes.get(OK, 0))
    failed = [r for r in reports if r.first_error]
    if failed:
        # The earliest failure in time is the one that tells what ran out first.
        first = min(failed, key=lambda r: r.first_error_at if r.first_error_at is not None else float("inf"))
        step.first_error = f"{first.name}: {first.first_error}"
        step.first_error_class = first.first_error_class or errors.first_class()
    step.errors = errors
    step.crashed_replicas = sum(1 for r in reports if r.crashed)
    step.restarts = sum(r.restarts for r in reports)
    latency = merged(r.latency for r in reports)
    checkout = merged(r.checkout_wait for r in reports)
    step.latency_histogram = HistogramCounts.of(latency)
    step.checkout_wait_histogram = HistogramCounts.of(checkout)
    step.latency_ms = Percentiles(**latency.summary())
    step.checkout_wait_ms = Percentiles(**checkout.summary())
    step.throughput = throughput(reports)
    client = client_timeline(reports)
    if client is not None:
        step.client_peak_connections = client.max_open
        step.client_peak_exact = client.exact
        peak_at = client.peak_at_us
        # A replica's maximum alone bounds all time: the sum has no moment of its own then.
        step.client_peak_at = iso_utc(peak_at) if peak_at and client.bucket_us is not None else None
        step.client_connects = client.connects
    return step


def client_timeline(reports: list[ReplicaReport]) -> OpenTimeline | None:
    """The step's client witness: every replica's pool connections summed by time; None when a replica
    did not say (no summary, or one without its pool's counts): no sum can be claimed then."""
    timelines = [r.connections for r in reports]
    if not reports or any(t is None for t in timelines):
        return None
    return merge_open_timelines([t for t in timelines if t is not None])


def throughput(reports: list[ReplicaReport]) -> float:
    """Successful statements per second over the step's work phase: from the first replica's first
    attempt to the last replica's end of work (each replica's own clock marks; replicas that never
    worked count no time)."""
    starts = [r.work_started_at for r in reports if r.work_started_at is not None]
    ends = [r.work_ended_at for r in reports if r.work_ended_at is not None]
    ok = sum(int(r.outcomes.get(OK, 0)) for r in reports)
    if not starts or not ends or max(ends) <= min(starts):
        return 0.0
    return round(ok / (max(ends) - min(starts)), 2)


class BenchmarkRun:
    """Drives the status through Provisioning → Running → Completed | BoundaryFound | Failed.

    Every variant (``spec.variants``, or the one direct variant of a benchmark without them) runs the
    whole step plan in turn: its steps and verdict go to ``status.variants[i]``, and ``status.verdict``
    shows the first variant's (the printer columns')."""

    def __init__(self, spec: PoolBenchmarkSpec, status: BenchmarkStatus | None = None, *, clock: Clock):
        self.spec = spec
        self.clock = clock
        self.variants = spec.effective_variants()
        self.variant_specs = [spec.for_variant(v) for v in self.variants]
        self.plans: list[list[PlannedStep]] = []
        self.totals: list[int] = []  # steps per variant: the list's length, or a search's most probes
        self.offsets: list[int] = []
        for i, variant in enumerate(self.variants):
            offset = sum(self.totals)
            self.offsets.append(offset)
            self.plans.append(plan_steps(spec, variant, i, offset))
            rollout_step = 1 if spec.rollout is not None and spec.rollout.measure else 0
            self.totals.append((most_probes(spec.search) if spec.search else len(self.plans[-1])) + rollout_step)
        self.total = sum(self.totals)
        self.status = status or BenchmarkStatus(
            phase="Pending", total_steps=self.total, max_connections=spec.postgres.max_connections
        )
        self._link_variants()
        self.accumulator: StepAccumulator | None = None
        self.step: StepResult | None = None
        self.planned: PlannedStep | None = None
        self.database_restarts = 0  # new servers the probe has seen, in a step or between steps

    def _link_variants(self) -> None:
        """One ``status.variants`` entry per variant (kept from a resumed status)."""
        kept = {v.name: v for v in self.status.variants}
        self.status.variants = [
            kept.get(v.name) or VariantStatus(name=v.name, pooler=v.pooler, engine=s.workload.engine)
            for v, s in zip(self.variants, self.variant_specs, strict=True)
        ]

    def record_compatibility(self, variant_index: int, compatibility: Compatibility) -> None:
        """The compatibility probe's findings for a pooled variant (before its load)."""
        self.status.variants[variant_index].compatibility = compatibility

    def steps_of(self, variant_index: int) -> list[StepResult]:
        return self.status.variants[variant_index].steps

    def _judge_variant(self, variant_index: int) -> None:
        """A variant whose steps are done gets its verdict; ``status.verdict`` is always the first's."""
        self.status.variants[variant_index].verdict = overall_verdict(
            self.variant_specs[variant_index], self._finished(variant_index), self.variants[variant_index].pooler
        )
        self.status.verdict = self.status.variants[0].verdict
        self.status.short_verdict = short_verdict(self.status.verdict, self._finished(0))

    # -- progress through the phases -------------------------------------------------------
    def provisioning(self, message: str = "starting PostgreSQL") -> None:
        self.status.phase = "Provisioning"
        self.status.message = message
        set_conditions(self.status, self.clock())

    def next_step(self) -> PlannedStep | None:
        """The first planned step not yet finished (resume-safe), or None when done. A variant whose
        steps are all done (or stopped by a failure) gets its verdict here."""
        for i, variant in enumerate(self.status.variants):
            if variant.verdict is not None:
                continue
            planned = self._next_in(i)
            if planned is not None:
                return planned
            self._judge_variant(i)
        return None

    def _finished(self, variant_index: int) -> list[StepResult]:
        return [s for s in self.steps_of(variant_index) if s.outcome is not None]

    def _next_in(self, variant_index: int) -> PlannedStep | None:
        finished = self._finished(variant_index)
        planned = self._next_measured(variant_index, [s for s in finished if s.rollout_from is None])
        if planned is not None or any(s.rollout_from is not None for s in finished):
            return planned
        return self._rollout_step(variant_index, finished)

    def _rollout_step(self, variant_index: int, finished: list[StepResult]) -> PlannedStep | None:
        """After a variant's steps, with ``rollout.measure``: the replicas rolled with their surge pods."""
        rollout = self.spec.rollout
        if rollout is None or not rollout.measure:
            return None
        spec, variant = self.variant_specs[variant_index], self.variants[variant_index]
        old = rollout.replicas or largest_safe(spec, finished)[0]
        if not old:
            return None  # nothing passed: there is no safe count to roll
        step = planned_step(
            self.spec,
            variant,
            variant_index,
            len(finished) + 1,
            old + surge_pods(old, rollout.max_surge),
            self.offsets[variant_index],
        )
        return replace(step, rollout_from=old)

    def _next_measured(self, variant_index: int, finished: list[StepResult]) -> PlannedStep | None:
        search = self.spec.search
        if search is not None:  # a probe chosen from what the earlier probes found
            spec, variant = self.variant_specs[variant_index], self.variants[variant_index]
            replicas = next_probe(search, predicted_safe_replicas(spec, variant.pooler), finished)
            if replicas is None:
                return None
            return planned_step(
                self.spec, variant, variant_index, len(finished) + 1, replicas, self.offsets[variant_index]
            )
        plan = self.plans[variant_index]
        done = len(finished)
        if done and self.spec.stop_on_failure and finished[-1].outcome != "Passed":
            return None
        return plan[done] if done < len(plan) else None

    def begin_step(self, planned: PlannedStep) -> StepResult:
        # n/m over the steps that ran: earlier variants count what they ran (a search often fewer than
        # its most probes, a failure stops a list), this one and the later ones what they may still run.
        ran = sum(len(self._finished(i)) for i in range(planned.variant_index))
        position = ran + planned.index
        self.status.phase = "Running"
        self.status.current_step = position
        self.status.total_steps = ran + sum(self.totals[planned.variant_index :])
        self.status.current_variant = planned.tag
        self.status.replicas = planned.replicas
        self.status.progress = f"{position}/{self.status.total_steps}"
        self.status.message = (
            f"{planned.label}/{self.totals[planned.variant_index]}: {counted(planned.replicas, 'replica')}"
        )
        step = StepResult(
            replicas=planned.replicas,
            started_at=self.clock(),
            predicted_peak=planned.predicted_peak,
            predicted_idle=planned.predicted_idle,
            usable_connections=planned.usable,
            pooler=planned.pooler_result(),
            rollout_from=planned.rollout_from,
        )
        # An unfinished step left by an interrupted driver is replaced, never duplicated.
        self.status.variants[planned.variant_index].steps = self._finished(planned.variant_index) + [step]
        self.step = step
        self.planned = planned
        self.accumulator = StepAccumulator(replicas=planned.replicas, pooled=planned.pooler is not None)
        set_conditions(self.status, self.clock())
        return step

    def step_index(self) -> int:
        """The running step's 1-based index, or 0 between steps."""
        return self.status.current_step if self.step is not None else 0

    def restarts_seen(self) -> int:
        return self.database_restarts

    def add_sample(self, sample: Sample) -> None:
        if sample.server_restarted:
            self.database_restarts += 1
        if self.accumulator is None or self.step is None:
            return
        self.accumulator.add(sample)
        self.status.live_connections = self.accumulator.live
        self.accumulator.fill(self.step)
        self.status.peak_connections = max(self.status.peak_connections, self.accumulator.peak)

    def work_is_done(self) -> bool:
        return self.accumulator is not None and self.accumulator.work_done

    def record_connection_ages(self, ages: list[float]) -> None:
        """The workload's backends' ages (seconds since backend_start) when its work ended."""
        if self.step is None or not ages:
            return
        ordered = sorted(ages)
        self.step.connection_age_seconds = AgeStats(
            p50=round(ordered[(len(ordered) - 1) // 2], 3), max=round(ordered[-1], 3)
        )

    def mark_work_done(self, at: float = float("-inf")) -> None:
        """Every replica finished its work at ``at`` (sample time): later samples read the ghosts."""
        if self.accumulator is not None:
            self.accumulator.mark_work_done(at)

    def work_done_at(self) -> float | None:
        """When the running step's work was seen done (the platform's clock), None while it is not."""
        acc = self.accumulator
        if acc is None or not acc.work_done or acc.work_done_at == float("-inf"):
            return None
        return acc.work_done_at

    def finish_step(
        self,
        reports: list[ReplicaReport],
        *,
        timed_out: bool = False,
        reason: str | None = None,
        overlap: RolloutOverlap | None = None,
        server: WindowAccount | str | None = None,
    ) -> StepResult:
        """``overlap``: a rolling update's, judged with the step (no overlap measured no rollout).
        ``server``: the server's account of the step from its log, or why there is none."""
        assert self.step is not None
        assert self.accumulator is not None
        step = self.accumulator.fill(self.step)
        step.sample_interval_p99_ms = self.accumulator.interval_p99_ms()
        apply_server_account(step, server, self.accumulator.reads)
        aggregate_reports(step, reports)
        step.timed_out = timed_out
        apply_client_witness(step)
        step.reason = reason
        step.finished_at = self.clock()
        step.rollout_overlap = overlap
        judge_step(
            step,
            expected_replicas=step.replicas,
            limits=self.spec.limits,
            interval_ms=self.spec.sampling.interval_ms,
        )
        judge_rollout_overlap(step)
        every = self.status.all_steps()
        self.status.failures = sum(s.errors.total() for s in every)
        self.status.peak_connections = max(s.peak_connections for s in every)
        self.step, self.accumulator = None, None
        return step

    def record_leftovers(self, count: int) -> None:
        """Backends that outlived the last finished step and had to be terminated before the next."""
        index = self.planned.variant_index if self.planned is not None else 0
        finished = self._finished(index)
        if finished and count:
            finished[-1].leftover_backends += count

    def finish(self, message: str | None = None) -> BenchmarkStatus:
        for i, variant in enumerate(self.status.variants):
            variant.steps = self._finished(i)
            if variant.verdict is None:
                self._judge_variant(i)
        if self.spec.variants:  # the variants the spec names, side by side
            self.status.comparison = comparison(
                [v.name for v in self.status.variants],
                [v.verdict for v in self.status.variants],
                [v.steps for v in self.status.variants],
                [v.compatibility for v in self.status.variants],
            )
        verdict = self.status.verdict
        assert verdict is not None
        self.status.current_variant = ""
        every = self.status.all_steps()
        self.status.phase = self._final_phase()
        self.status.total_steps = self.status.current_step = len(every)  # what ran: n/n, however many were planned
        self.status.progress = f"{len(every)}/{len(every)}"
        self.status.message = message or self.status.comparison or verdict.summary
        self.status.live_connections = 0
        set_conditions(self.status, self.clock())
        return self.status

    def _final_phase(self) -> Phase:
        """Completed: every step passed. BoundaryFound: a search found each variant's breaking point
        (or passed all the way), and every measured rollout passed. Failed: anything else."""
        every = self.status.all_steps()
        if all(s.outcome == "Passed" for s in every):
            return "Completed"
        search = self.spec.search
        if search is None or any(s.outcome != "Passed" for s in every if s.rollout_from is not None):
            return "Failed"
        probes = [[s for s in self.steps_of(i) if s.rollout_from is None] for i in range(len(self.variants))]
        if all(found(search, p) or all(s.outcome == "Passed" for s in p) for p in probes):
            return "BoundaryFound"
        return "Failed"

    def fail(self, message: str) -> BenchmarkStatus:
        """The environment broke (not a measured failure): phase Failed, steps kept."""
        self.status.phase = "Failed"
        self.status.message = message
        set_conditions(self.status, self.clock())
        self.status.live_connections = 0
        return self.status


def status_from_resource(status: dict[str, Any] | None) -> BenchmarkStatus | None:
    """What a resource's status says was done, to resume from (kopf's own bookkeeping keys are
    dropped); None for a resource that never started."""
    if not status or not status.get("phase"):
        return None
    known = {field.alias or name for name, field in BenchmarkStatus.model_fields.items()}
    return BenchmarkStatus.model_validate({k: v for k, v in status.items() if k in known})


def full_status(status: dict[str, Any] | None) -> dict[str, Any]:
    """A written status (fields at their default left out) with every field a reader looks up, at its
    default where it was not written; keys this version does not know are kept as they are, and a status
    this version cannot read is returned as it is."""
    raw = status if isinstance(status, dict) else {}
    try:
        known = status_from_resource(raw)
    except ValidationError:
        return raw
    return raw if known is None else {**raw, **known.full_json()}


def set_conditions(status: BenchmarkStatus, now: str) -> None:
    """Keep ``status.conditions`` in step with the phase, as the Kubernetes API conventions and kstatus
    (the library Flux and kpt decide health with) read them: ``Reconciling`` (True while it provisions or
    measures), ``Ready`` (True once every step passed, or a search found its breaking point; False with
    the reason otherwise) and ``Stalled`` (True once it ended without that answer: a step failed or was
    inconclusive, the spec is invalid or the environment broke). So kstatus reads a benchmark as its
    phase says: InProgress while it runs, Current once it passed, Failed once it failed; a finished one
    is never left to read as InProgress (Ready=False with neither Reconciling nor Stalled True), which
    would hold a GitOps health check until its timeout. ``kubectl wait --for=condition=Ready`` waits for
    a passing benchmark (or a found boundary), ``--for=condition=Stalled`` for a failed one and
    ``--for=condition=Reconciling=false`` for any finished one. A condition's lastTransitionTime changes
    only when its status does."""
    phase, message = status.phase, status.message
    verdict = status.verdict
    measured_failure = phase == "Failed" and verdict is not None
    broken = phase == "Invalid" or (phase == "Failed" and verdict is None)
    finished = phase in TERMINAL_PHASES
    if phase == "Completed":
        ready = ("True", "AllStepsPassed")
    elif phase == "BoundaryFound":
        ready = ("True", "BoundaryFound")
    elif measured_failure:
        inconclusive = any(s.outcome == "Inconclusive" for s in status.all_steps())
        ready = ("False", "Inconclusive" if inconclusive else "StepFailed")
    elif phase == "Invalid":
        ready = ("False", "InvalidSpec")
    elif broken:
        ready = ("False", "EnvironmentFailed")
    else:
        ready = ("False", phase or "Pending")
    wanted = {
        "Ready": ready,
        "Reconciling": ("False", "Finished") if finished else ("True", phase or "Pending"),
        # Failed or Invalid: it ended without the answer Ready stands for, and will not move again.
        "Stalled": ("True", ready[1])
        if phase in ("Failed", "Invalid")
        else ("False", "Finished" if finished else "Progressing"),
    }
    previous = {c.type: c for c in status.conditions}
    conditions = []
    for kind, (value, reason) in wanted.items():
        before = previous.get(kind)
        changed = before is None or before.status != value
        conditions.append(
            Condition(
                type=kind,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now if changed or before is None else before.last_transition_time,
                observed_generation=status.observed_generation,
            )
        )
    status.conditions = conditions


def invalid_status(message: str, generation: int | None, now: str) -> BenchmarkStatus:
    """The status of a spec the CRD schema could not refuse (a contradiction): phase Invalid, stamped ``now``."""
    status = BenchmarkStatus(phase="Invalid", message=message, observed_generation=generation, updated_at=now)
    set_conditions(status, now)
    return status
