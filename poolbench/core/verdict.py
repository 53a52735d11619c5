"""Predictions and verdicts: the pool arithmetic, as pure functions.

Per replica, a QueuePool opens at most min(threads, pool_size + max_overflow) connections and,
after the burst, keeps min(pool_size, peak) of them open and idle (the "ghosts"). NullPool opens one
per concurrent checkout and keeps none (SQLAlchemy's pool/impl.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .results import StepResult, Verdict
from .spec import MONITOR_CONNECTIONS, LimitsSpec, PoolBenchmarkSpec

#: libpq's prefix: 'connection to server at "HOST" (ADDRESS), port N failed: ', where "(ADDRESS)" is
#: there when HOST is a name (a Service name in a cluster), and 'on socket "…"' for a Unix socket.
CONNECTION_PREFIX = re.compile(r'^connection to server (at|on) (socket )?"[^"]*"( \([^)]*\))?(, port \d+)? failed: ')


@dataclass(frozen=True)
class Prediction:
    replicas: int
    per_replica_peak: int
    per_replica_idle: int
    usable: int

    @property
    def peak(self) -> int:
        return self.replicas * self.per_replica_peak

    @property
    def idle(self) -> int:
        return self.replicas * self.per_replica_idle

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable


def per_replica_peak(spec: PoolBenchmarkSpec) -> int:
    workload = spec.workload
    engine = workload.engine
    threads = workload.threads
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


def per_replica_idle(spec: PoolBenchmarkSpec) -> int:
    engine = spec.workload.engine
    peak = per_replica_peak(spec)
    if engine.pool_class == "NullPool":
        return 0
    if engine.pool_class in ("StaticPool", "SingletonThreadPool"):
        return peak
    size = engine.effective_pool_size()
    return peak if size == 0 else min(size, peak)


def usable_connections(spec: PoolBenchmarkSpec) -> int:
    """Slots the workload can take (``PoolBenchmarkSpec.usable_connections``)."""
    return spec.usable_connections()


def predict(spec: PoolBenchmarkSpec, replicas: int) -> Prediction:
    return Prediction(replicas, per_replica_peak(spec), per_replica_idle(spec), usable_connections(spec))


def monitor_blind(step: StepResult) -> bool:
    """The monitor lost most of the step's reads (or every one): its peaks mean nothing."""
    return step.samples == 0 or step.sample_gaps > step.samples


def limit_breaches(step: StepResult, limits: LimitsSpec | None) -> list[str]:
    """Each of ``spec.limits`` the step exceeded, naming the limit and the measured value."""
    if limits is None:
        return []
    breaches = []
    if limits.max_latency_p95_ms is not None and step.latency_ms.p95 > limits.max_latency_p95_ms:
        breaches.append(f"latency p95 {step.latency_ms.p95:g} ms exceeds limits.maxLatencyP95Ms"
                        f" {limits.max_latency_p95_ms:g} ms")
    if limits.max_checkout_wait_p95_ms is not None and step.checkout_wait_ms.p95 > limits.max_checkout_wait_p95_ms:
        breaches.append(f"checkout wait p95 {step.checkout_wait_ms.p95:g} ms exceeds limits.maxCheckoutWaitP95Ms"
                        f" {limits.max_checkout_wait_p95_ms:g} ms")
    return breaches


def judge_step(step: StepResult, *, expected_replicas: int, limits: LimitsSpec | None = None) -> StepResult:
    """Set outcome and reason from what was measured. A step passes only when nothing failed and
    the monitor saw it; a step with no failure whose reads mostly failed is Inconclusive."""
    reasons = [step.reason] if step.reason else []  # what the driver saw (e.g. pods that never started)
    errors = step.errors.total()
    if errors:
        first = step.first_error_class or step.errors.first_class()
        reasons.append(f"{errors} failed attempts (first: {first})")
    if step.crashed_replicas:
        reasons.append(f"{step.crashed_replicas} of {expected_replicas} replicas crashed")
    if step.restarts:
        reasons.append(f"{step.restarts} restarts")
    if step.timed_out:
        reasons.append("the step timed out")
    if step.database_restarts:
        reasons.insert(0, f"the database restarted during the step ({step.database_restarts}x)")
    reasons += limit_breaches(step, limits)
    blind = monitor_blind(step)
    if blind:
        total = step.samples + step.sample_gaps
        reasons.append(f"the monitor lost {step.sample_gaps} of {total} reads"
                       + (f" (last: {step.monitor_error})" if step.monitor_error else ""))
    if reasons:
        only_blind = blind and len(reasons) == 1
        step.outcome = "Inconclusive" if only_blind else "Failed"
        step.reason = "; ".join(reasons)
        return step
    step.outcome = "Passed"
    step.reason = (f"peak {step.peak_connections} of {step.usable_connections} usable connections,"
                   f" {step.idle_at_end} idle at end")
    if step.sample_gaps:
        step.reason += f", {step.sample_gaps} of {step.samples + step.sample_gaps} reads lost"
    return step


def failure_cause(step: StepResult) -> str:
    """What made a step fail, for the verdict: the first error's class and text, or what stopped it."""
    if step.outcome == "Inconclusive":
        return f"inconclusive: {step.reason}"
    if step.database_restarts:
        return "the database restarted during the step"
    cls = step.first_error_class or step.errors.first_class()
    if cls:
        text = step.first_error.split(": ", 1)[-1] if step.first_error else ""  # without "replica: "
        text = CONNECTION_PREFIX.sub("", text)  # libpq's "connection to server at …, port … failed: "
        return f"{cls}" + (f" ({text[:160]})" if text else "")
    if step.timed_out:
        return "a timeout (the replicas did not finish within stepTimeoutSeconds)"
    if step.crashed_replicas:
        return f"{step.crashed_replicas} crashed replicas"
    return step.reason or "errors"


def queueing(spec: PoolBenchmarkSpec, steps: list[StepResult]) -> str:
    """When a replica runs more threads than its pool may open, the threads queue for connections:
    what users feel first is waiting, not errors. Says so with the measured wait, or nothing."""
    cap, threads = per_replica_peak(spec), spec.workload.threads
    measured = [s for s in steps if s.checkout_wait_histogram.counts and sum(s.checkout_wait_histogram.counts)]
    if cap >= threads or not measured:
        return ""
    last = measured[-1]
    return (f"Threads queue for connections: each replica runs {threads} threads on at most {cap} pooled"
            f" connections, so {threads - cap} wait for a checkout (mean {last.checkout_wait_ms.mean:g} ms,"
            f" p95 {last.checkout_wait_ms.p95:g} ms, max {last.checkout_wait_ms.max:g} ms at {last.replicas}"
            f" replicas).")


def overall_verdict(spec: PoolBenchmarkSpec, steps: list[StepResult]) -> Verdict:
    """maxSafeReplicas: the largest passing step before the first failure."""
    max_safe: int | None = None
    first_failing: int | None = None
    failing_step: StepResult | None = None
    for step in steps:
        if step.outcome == "Inconclusive":  # nothing can be claimed beyond a step nobody saw
            failing_step = step
            break
        if step.outcome == "Failed":
            first_failing, failing_step = step.replicas, step
            break
        if step.outcome == "Passed":
            max_safe = step.replicas if max_safe is None else max(max_safe, step.replicas)
    per_peak = per_replica_peak(spec)
    usable = usable_connections(spec)
    role = spec.workload.role
    if failing_step is not None:
        pred = predict(spec, failing_step.replicas)
        reason = (
            f"{failing_step.replicas} replicas × {per_peak} connections = {pred.peak} needed,"
            f" {usable} usable ({spec.postgres.max_connections} max_connections"
            + (f" − {spec.postgres.superuser_reserved_connections} reserved" if role == "app" else "")
            + f" − {MONITOR_CONNECTIONS} monitor); {failing_step.reason}"
        )
    elif steps:
        reason = f"every step fit: at most {max(s.peak_connections for s in steps)} of {usable} usable connections"
    else:
        reason = "no step ran"
    safe_limit = usable // per_peak if per_peak else None
    if failing_step is not None:
        verb = "were" if failing_step.outcome == "Inconclusive" else "failed with"
        summary = (
            f"{max_safe if max_safe is not None else 'No'} replicas ran safely;"
            f" {failing_step.replicas} replicas {verb} {failure_cause(failing_step)}"
            f" (each replica may open {per_peak}; the server allows {usable}, so at most {safe_limit} replicas fit)."
        )
    elif max_safe is not None:
        summary = (
            f"All steps passed up to {max_safe} replicas (each may open {per_peak};"
            f" at most {safe_limit} replicas fit in {usable} usable connections)."
        )
    else:
        summary = "No step completed."
    waiting = queueing(spec, steps)
    if waiting:
        summary += " " + waiting
    return Verdict(
        max_safe_replicas=max_safe, first_failing_replicas=first_failing, reason=reason, summary=summary
    )
