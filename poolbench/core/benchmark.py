"""The benchmark's state machine, shared by the local runner and the operator (pure, no I/O).

The step loop (``steploop``) feeds it what the platform saw (samples, replica reports); this
module turns that into the status: step plan, per-step results, phase and verdict. Because the
status is the whole state, a run can resume from it (the operator after a restart).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .histogram import BOUNDS_MS, Histogram, merged
from .outcomes import OK
from .results import (
    AgeStats,
    BenchmarkStatus,
    Condition,
    ErrorCounts,
    HistogramCounts,
    Percentiles,
    StepResult,
)
from .sampling import Sample, StepAccumulator
from .spec import PoolBenchmarkSpec
from .verdict import judge_step, overall_verdict, predict


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PlannedStep:
    index: int  # 1-based, as shown to users
    replicas: int
    predicted_peak: int
    predicted_idle: int
    usable: int


def plan_steps(spec: PoolBenchmarkSpec) -> list[PlannedStep]:
    plan = []
    for i, replicas in enumerate(spec.steps, start=1):
        p = predict(spec, replicas)
        plan.append(PlannedStep(i, replicas, p.peak, p.idle, p.usable))
    return plan


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

    @classmethod
    def from_summary(cls, name: str, summary: dict[str, Any] | None, *, exit_code: int | None = None,
                     restarts: int = 0) -> ReplicaReport:
        summary = summary or {}
        crashed = summary.get("phase") == "crashed" or bool(exit_code)
        return cls(
            name=name,
            outcomes=dict(summary.get("outcomes") or {}),
            first_error=summary.get("firstError"),
            first_error_class=summary.get("firstErrorClass"),
            first_error_at=summary.get("firstErrorAt"),
            crashed=crashed,
            restarts=restarts,
            latency=Histogram.from_json(summary.get("latencyMs")),
            checkout_wait=Histogram.from_json(summary.get("checkoutWaitMs")),
            work_started_at=_epoch(summary.get("workStartedAt")),
            work_ended_at=_epoch(summary.get("workEndedAt")),
        )


def _epoch(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
    step.latency_histogram = HistogramCounts.model_validate(latency.to_json())
    step.checkout_wait_histogram = HistogramCounts.model_validate(checkout.to_json())
    step.latency_ms = Percentiles(**latency.summary())
    step.checkout_wait_ms = Percentiles(**checkout.summary())
    step.throughput = throughput(reports)
    return step


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
    """Drives the status through Provisioning → Running → Completed | Failed."""

    def __init__(self, spec: PoolBenchmarkSpec, status: BenchmarkStatus | None = None):
        self.spec = spec
        self.plan = plan_steps(spec)
        self.status = status or BenchmarkStatus(
            phase="Pending", total_steps=len(self.plan), max_connections=spec.postgres.max_connections
        )
        self.status.histogram_bounds_ms = list(BOUNDS_MS)  # what every step's histograms count in
        self.accumulator: StepAccumulator | None = None
        self.step: StepResult | None = None
        self.database_restarts = 0  # new servers the probe has seen, in a step or between steps

    # -- progress through the phases -------------------------------------------------------
    def provisioning(self, message: str = "starting PostgreSQL") -> None:
        self.status.phase = "Provisioning"
        self.status.message = message
        set_conditions(self.status)

    def next_step(self) -> PlannedStep | None:
        """The first planned step not yet finished (resume-safe), or None when done."""
        done = len([s for s in self.status.steps if s.outcome is not None])
        if self.status.verdict is not None:
            return None
        if done and self.spec.stop_on_failure and self.status.steps[done - 1].outcome != "Passed":
            return None
        return self.plan[done] if done < len(self.plan) else None

    def begin_step(self, planned: PlannedStep) -> StepResult:
        self.status.phase = "Running"
        self.status.current_step = planned.index
        self.status.replicas = planned.replicas
        self.status.progress = f"{planned.index}/{len(self.plan)}"
        self.status.message = f"step {planned.index}/{len(self.plan)}: {planned.replicas} replicas"
        step = StepResult(
            replicas=planned.replicas,
            started_at=utc_now(),
            predicted_peak=planned.predicted_peak,
            predicted_idle=planned.predicted_idle,
            usable_connections=planned.usable,
        )
        # An unfinished step left by an interrupted driver is replaced, never duplicated.
        self.status.steps = [s for s in self.status.steps if s.outcome is not None] + [step]
        self.step = step
        self.accumulator = StepAccumulator(replicas=planned.replicas)
        set_conditions(self.status)
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
        self.step.connection_age_seconds = AgeStats(p50=round(ordered[(len(ordered) - 1) // 2], 3),
                                                    max=round(ordered[-1], 3))

    def mark_work_done(self, at: float = float("-inf")) -> None:
        """Every replica finished its work at ``at`` (sample time): later samples read the ghosts."""
        if self.accumulator is not None:
            self.accumulator.mark_work_done(at)

    def finish_step(self, reports: list[ReplicaReport], *, timed_out: bool = False,
                    reason: str | None = None) -> StepResult:
        assert self.step is not None and self.accumulator is not None
        step = self.accumulator.fill(self.step)
        aggregate_reports(step, reports)
        step.timed_out = timed_out
        step.reason = reason
        step.finished_at = utc_now()
        judge_step(step, expected_replicas=step.replicas, limits=self.spec.limits)
        self.status.failures = sum(s.errors.total() for s in self.status.steps)
        self.status.peak_connections = max(s.peak_connections for s in self.status.steps)
        self.step, self.accumulator = None, None
        return step

    def record_leftovers(self, count: int) -> None:
        """Backends that outlived the last finished step and had to be terminated before the next."""
        finished = [s for s in self.status.steps if s.outcome is not None]
        if finished and count:
            finished[-1].leftover_backends += count

    def finish(self, message: str | None = None) -> BenchmarkStatus:
        steps = [s for s in self.status.steps if s.outcome is not None]
        self.status.steps = steps
        verdict = overall_verdict(self.spec, steps)
        self.status.verdict = verdict
        self.status.phase = "Completed" if all(s.outcome == "Passed" for s in steps) else "Failed"
        self.status.message = message or verdict.summary
        self.status.live_connections = 0
        set_conditions(self.status)
        return self.status

    def fail(self, message: str) -> BenchmarkStatus:
        """The environment broke (not a measured failure): phase Failed, steps kept."""
        self.status.phase = "Failed"
        self.status.message = message
        set_conditions(self.status)
        self.status.live_connections = 0
        return self.status


def status_from_resource(status: dict[str, Any] | None) -> BenchmarkStatus | None:
    """What a resource's status says was done, to resume from (kopf's own bookkeeping keys are
    dropped); None for a resource that never started."""
    if not status or not status.get("phase"):
        return None
    known = {field.alias or name for name, field in BenchmarkStatus.model_fields.items()}
    return BenchmarkStatus.model_validate({k: v for k, v in status.items() if k in known})


def set_conditions(status: BenchmarkStatus, now: str | None = None) -> None:
    """Keep ``status.conditions`` in step with the phase, as the Kubernetes API conventions and kstatus
    read them: ``Reconciling`` (True while it provisions or measures), ``Ready`` (True once every step
    passed; False with the reason otherwise) and ``Stalled`` (True when it cannot go on: an invalid
    spec or a broken environment). ``kubectl wait --for=condition=Ready`` waits for a passing
    benchmark; ``--for=condition=Reconciling=false`` for any finished one. A condition's
    lastTransitionTime changes only when its status does."""
    now = now or utc_now()
    phase, message = status.phase, status.message
    verdict = status.verdict
    measured_failure = phase == "Failed" and verdict is not None
    broken = phase == "Invalid" or (phase == "Failed" and verdict is None)
    if phase == "Completed":
        ready = ("True", "AllStepsPassed")
    elif measured_failure:
        inconclusive = any(s.outcome == "Inconclusive" for s in status.steps)
        ready = ("False", "Inconclusive" if inconclusive else "StepFailed")
    elif phase == "Invalid":
        ready = ("False", "InvalidSpec")
    elif broken:
        ready = ("False", "EnvironmentFailed")
    else:
        ready = ("False", phase or "Pending")
    wanted = {
        "Ready": ready,
        "Reconciling": ("True", phase or "Pending") if phase in ("Pending", "Provisioning", "Running", "")
        else ("False", "Finished"),
        "Stalled": ("True", ready[1]) if broken else ("False", "Progressing" if not status.verdict else "Finished"),
    }
    previous = {c.type: c for c in status.conditions}
    conditions = []
    for kind, (value, reason) in wanted.items():
        before = previous.get(kind)
        changed = before is None or before.status != value
        conditions.append(Condition(
            type=kind, status=value, reason=reason, message=message,
            last_transition_time=now if changed or before is None else before.last_transition_time,
            observed_generation=status.observed_generation,
        ))
    status.conditions = conditions


def invalid_status(message: str, generation: int | None) -> BenchmarkStatus:
    """The status of a spec the CRD schema could not refuse (a contradiction): phase Invalid."""
    status = BenchmarkStatus(phase="Invalid", message=message, observed_generation=generation,
                             updated_at=utc_now())
    set_conditions(status)
    return status
