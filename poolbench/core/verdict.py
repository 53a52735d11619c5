"""Predictions and verdicts: the pool arithmetic, as pure functions.

Per replica, a QueuePool opens at most min(threads, pool_size + max_overflow) connections and,
after the burst, keeps min(pool_size, peak) of them open and idle (the "ghosts"). NullPool opens one
per concurrent checkout and keeps none (SQLAlchemy's pool/impl.py).

Behind a PgBouncer those are *client* connections at the pooler: they must fit in
instances × (max_client_conn − 1: the benchmark's monitor holds one at each), and the server sees
at most instances × (default_pool_size + reserve_pool_size) backends, whatever the replica count.
In session mode a client keeps its server connection while it is open, so at most that many
clients run at once and the rest wait (until query_wait_timeout); in transaction mode only a
transaction holds one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .results import StepResult, Verdict
from .search import searched
from .spec import MONITOR_CONNECTIONS, LimitsSpec, PoolBenchmarkSpec, PoolerSpec

#: libpq's prefix: 'connection to server at "HOST" (ADDRESS), port N failed: ', where "(ADDRESS)" is
#: there when HOST is a name (a Service name in a cluster), and 'on socket "…"' for a Unix socket.
CONNECTION_PREFIX = re.compile(r'^connection to server (at|on) (socket )?"[^"]*"( \([^)]*\))?(, port \d+)? failed: ')


@dataclass(frozen=True)
class Prediction:
    replicas: int
    per_replica_peak: int
    per_replica_idle: int
    usable: int
    pooler: PoolerSpec | None = None

    @property
    def client_peak(self) -> int:
        """Connections the engines open (to the server, or to the pooler when pooled)."""
        return self.replicas * self.per_replica_peak

    @property
    def client_capacity(self) -> int:
        """Client connections the poolers accept (0: no pooler)."""
        return self.pooler.replicas * self.pooler.usable_clients() if self.pooler else 0

    @property
    def server_capacity(self) -> int:
        """Server connections the poolers may open (0: no pooler)."""
        return self.pooler.replicas * self.pooler.server_connections() if self.pooler else 0

    @property
    def peak(self) -> int:
        """Server backends at the peak: the engines' connections, or what the poolers open for them."""
        if self.pooler is None:
            return self.client_peak
        return min(self.client_peak, self.server_capacity)

    @property
    def idle(self) -> int:
        """Ghosts: the app pools' idle connections (at the pooler, when pooled)."""
        return self.replicas * self.per_replica_idle

    @property
    def waiting(self) -> int:
        """Pooled: clients beyond the server connections. In session mode they wait for another
        client to disconnect; in transaction mode for a transaction to end."""
        return max(0, self.client_peak - self.server_capacity) if self.pooler else 0

    @property
    def fits(self) -> bool:
        if self.pooler is None:
            return self.peak <= self.usable
        return self.peak <= self.usable and self.client_peak <= self.client_capacity


def per_process_peak(spec: PoolBenchmarkSpec) -> int:
    """Connections one engine (one worker process) opens at most."""
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


def per_process_idle(spec: PoolBenchmarkSpec) -> int:
    """Connections one engine keeps open and idle after its burst (its ghosts)."""
    engine = spec.workload.engine
    peak = per_process_peak(spec)
    if engine.pool_class == "NullPool":
        return 0
    if engine.pool_class in ("StaticPool", "SingletonThreadPool"):
        return peak
    size = engine.effective_pool_size()
    return peak if size == 0 else min(size, peak)


def per_replica_peak(spec: PoolBenchmarkSpec) -> int:
    """A replica runs ``workload.processes`` worker processes, each with its own engine and pool."""
    return spec.workload.processes * per_process_peak(spec)


def per_replica_idle(spec: PoolBenchmarkSpec) -> int:
    return spec.workload.processes * per_process_idle(spec)


def usable_connections(spec: PoolBenchmarkSpec) -> int:
    """Slots the workload can take (``PoolBenchmarkSpec.usable_connections``)."""
    return spec.usable_connections()


def predict(spec: PoolBenchmarkSpec, replicas: int, pooler: PoolerSpec | None = None) -> Prediction:
    return Prediction(replicas, per_replica_peak(spec), per_replica_idle(spec), usable_connections(spec), pooler)


def surge_pods(replicas: int, max_surge: int | str) -> int:
    """Extra pods a rolling update may start: an absolute count, or a percentage of the replicas
    rounded up (Kubernetes rounds maxSurge up and maxUnavailable down)."""
    if isinstance(max_surge, int):
        return max_surge
    return math.ceil(replicas * int(max_surge.rstrip("%")) / 100)


def rollout_safe(per_replica: int, budget: int, max_surge: int | str | None = None) -> int:
    """The most replicas whose connections (with a rollout's surge pods, if given) fit in ``budget``."""
    if per_replica <= 0:
        return 0
    replicas = budget // per_replica
    if max_surge is None:
        return replicas
    while replicas > 0 and (replicas + surge_pods(replicas, max_surge)) * per_replica > budget:
        replicas -= 1
    return replicas


def replicas_word(count: int | None) -> str:
    return "replica" if count == 1 else "replicas"


def pooled_safe_replicas(spec: PoolBenchmarkSpec, pooler: PoolerSpec) -> int:
    """Most replicas the poolers take without refusing a client (max_client_conn) and, in session
    mode, without a client waiting for a server connection."""
    per_peak = per_replica_peak(spec)
    if per_peak == 0:
        return 0
    limit = pooler.replicas * pooler.usable_clients()
    if pooler.pool_mode == "session":
        limit = min(limit, pooler.replicas * pooler.server_connections())
    return limit // per_peak


def pooler_budget(spec: PoolBenchmarkSpec, pooler: PoolerSpec) -> str:
    """The pooler arithmetic in one sentence, for verdicts."""
    usable = usable_connections(spec)
    server = pooler.replicas * pooler.server_connections()
    per_instance = f"{pooler.default_pool_size}" + (f" + {pooler.reserve_pool_size} reserve"
                                                   if pooler.reserve_pool_size else "")
    text = (f"server backends ≤ {pooler.replicas} × ({per_instance}) = {server}"
            + (f" of {usable} usable" if server <= usable else f", more than the {usable} usable:"
               " the server refuses the poolers' logins beyond that")
            + f"; clients ≤ {pooler.replicas} × ({pooler.max_client_conn} max_client_conn − 1 monitor) ="
              f" {pooler.replicas * pooler.usable_clients()}")
    if pooler.pool_mode == "session":
        text += (f"; in session mode a client holds its server connection while it is open, so only"
                 f" {server} clients run at once")
    return text


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
    elif step.pooled and step.pooler_sample_gaps * 2 > step.samples:
        blind = True  # the pooler's side of the step was not seen: its client and wait figures mean nothing
        reasons.append(f"the monitor lost {step.pooler_sample_gaps} of the poolers' {step.samples} reads"
                       + (f" (last: {step.monitor_error})" if step.monitor_error else ""))
    if reasons:
        only_blind = blind and len(reasons) == 1
        step.outcome = "Inconclusive" if only_blind else "Failed"
        step.reason = "; ".join(reasons)
        return step
    step.outcome = "Passed"
    if step.pooled:
        step.reason = (f"peak {step.peak_connections} server backends (at most {step.server_capacity}) of"
                       f" {step.usable_connections} usable, {step.client_peak_connections} clients at the pooler"
                       f" ({step.pooler_waiting_peak} waiting at most, longest wait {step.pooler_max_wait_ms:g} ms),"
                       f" {step.idle_at_end} idle clients at end")
    else:
        step.reason = (f"peak {step.peak_connections} of {step.usable_connections} usable connections,"
                       f" {step.idle_at_end} idle at end")
    if step.sample_gaps:
        step.reason += f", {step.sample_gaps} of {step.samples + step.sample_gaps} reads lost"
    return step


def judge_rollout_overlap(step: StepResult) -> StepResult:
    """A rolling update whose old and surge replicas did not hold their connections at once measured no
    rolling update: it is never Passed (Inconclusive, saying what was seen); a failure stays one."""
    overlap = step.rollout_overlap
    if overlap is None or overlap.achieved:
        return step
    note = f"old and new replicas did not overlap as in a rolling update: {overlap.detail}"
    if step.outcome == "Passed":
        step.outcome = "Inconclusive"
        step.reason = f"{note} (measured: {step.reason})"
    else:
        step.reason = f"{step.reason}; {note}" if step.reason else note
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
    cap, threads = per_process_peak(spec), spec.workload.threads
    measured = [s for s in steps if s.checkout_wait_histogram.counts and sum(s.checkout_wait_histogram.counts)]
    if cap >= threads or not measured:
        return ""
    last = measured[-1]
    who = "each worker process" if spec.workload.processes > 1 else "each replica"
    callers = "tasks" if spec.workload.driver == "asyncpg" else "threads"
    return (f"{callers.capitalize()} queue for connections: {who} runs {threads} {callers} on at most {cap} pooled"
            f" connections, so {threads - cap} wait for a checkout (mean {last.checkout_wait_ms.mean:g} ms,"
            f" p95 {last.checkout_wait_ms.p95:g} ms, max {last.checkout_wait_ms.max:g} ms at {last.replicas}"
            f" replicas).")


def overall_verdict(spec: PoolBenchmarkSpec, steps: list[StepResult], pooler: PoolerSpec | None = None) -> Verdict:
    """maxSafeReplicas: the largest passing step before the first failure."""
    rollouts = [s for s in steps if s.rollout_from is not None]
    steps = [s for s in steps if s.rollout_from is None]
    verdict = (pooled_verdict(spec, steps, pooler, rollouts) if pooler is not None
               else direct_verdict(spec, steps, rollouts))
    verdict.predicted_max_safe_replicas = predicted_safe_replicas(spec, pooler)
    for step in rollouts:
        verdict.summary += " " + rollout_line(step)
    search = spec.search
    if search is not None:
        found = verdict.max_safe_replicas
        if found is None:
            where = f"even {search.min} (the search's min) failed"
        elif verdict.first_failing_replicas is None:
            where = f"up to {search.max} (the search's max) every probe passed: the breaking point lies higher"
        else:
            where = f"found between {found} and {verdict.first_failing_replicas}"
        verdict.summary = (f"Search {search.min}..{search.max} in {len(steps)} steps: {where}; the arithmetic"
                           f" predicted {verdict.predicted_max_safe_replicas}. " + verdict.summary)
    return verdict


def rollout_line(step: StepResult) -> str:
    """A measured rolling update in one sentence: what it was (its first surge: the old replicas kept,
    the surge pods started beside them, no pod replaced), its peak beside the prediction, and what it
    means for the count rolled, in the same words as the verdict's opening."""
    old = step.rollout_from
    text = (f"A rolling update of {old} replicas ({step.replicas} pods at once): peak {step.peak_connections}"
            f" connections (predicted {step.predicted_peak}) of {step.usable_connections} usable")
    how = (f"measured as its first surge: the {old} old replicas kept, {step.replicas - (old or 0)} surge pods"
           " started beside them, no pod replaced")
    if step.outcome == "Passed":
        overlap = f"; {step.rollout_overlap.detail}" if step.rollout_overlap is not None else ""
        fits = step.predicted_peak <= step.usable_connections and (
            not step.pooled or step.predicted_client_peak <= step.client_capacity)
        if not fits:  # the pools opened fewer than they may: the arithmetic's worst case still does not fit
            return (f"{text}, Passed ({how}{overlap}), but only because the pools opened fewer connections than"
                    f" they may: by the arithmetic {old} {replicas_word(old)} do not stay safe during a rolling"
                    " update.")
        return f"{text}, Passed ({how}{overlap}): {old} {replicas_word(old)} stay safe during a rolling update."
    if step.outcome == "Failed":
        return (f"{text}, Failed with {failure_cause(step)} ({how}): {old} {replicas_word(old)} are safe at rest"
                " but not during a rolling update.")
    return (f"{text}, Inconclusive: {step.reason} ({how}): whether {old} {replicas_word(old)} stay safe during a"
            " rolling update was not measured.")


def passed_opening(max_safe: int, rollouts: list[StepResult]) -> str:
    """The opening of a verdict whose steps all passed: never "All steps passed" when a measured rolling
    update did not."""
    unsafe = [s for s in rollouts if s.outcome != "Passed"]
    if not unsafe:
        return f"All steps passed up to {max_safe} replicas"
    how = "failed" if unsafe[0].outcome == "Failed" else "was inconclusive"
    return (f"Every step at rest passed up to {max_safe} replicas, but the rolling update of"
            f" {unsafe[0].rollout_from} replicas {how}")


def largest_safe(spec: PoolBenchmarkSpec, steps: list[StepResult]) -> tuple[int | None, StepResult | None]:
    """The largest passing count and the step that stopped the run: in a list, the first failing (or
    inconclusive) step and the largest passing one before it; in a search, the bracket's ends."""
    if spec.search is not None:
        return searched(spec.search, steps)
    max_safe: int | None = None
    for step in steps:
        if step.outcome in ("Failed", "Inconclusive"):  # nothing can be claimed beyond a step nobody saw
            return max_safe, step
        if step.outcome == "Passed":
            max_safe = step.replicas if max_safe is None else max(max_safe, step.replicas)
    return max_safe, None


def predicted_safe_replicas(spec: PoolBenchmarkSpec, pooler: PoolerSpec | None = None) -> int:
    """What the arithmetic says the benchmark will find: the most replicas that fit (through the
    poolers when pooled)."""
    if pooler is not None:
        return pooled_safe_replicas(spec, pooler)
    per_peak = per_replica_peak(spec)
    return usable_connections(spec) // per_peak if per_peak else 0


def direct_verdict(spec: PoolBenchmarkSpec, steps: list[StepResult], rollouts: list[StepResult] | None = None
                   ) -> Verdict:
    max_safe, failing_step = largest_safe(spec, steps)
    first_failing = failing_step.replicas if failing_step is not None and failing_step.outcome == "Failed" else None
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
            f" (each replica may open {per_peak}; the server allows {usable}, so at most {safe_limit}"
            f" {replicas_word(safe_limit)} fit)."
        )
    elif max_safe is not None:
        summary = (
            f"{passed_opening(max_safe, rollouts or [])} (each may open {per_peak};"
            f" at most {safe_limit} replicas fit in {usable} usable connections)."
        )
    else:
        summary = "No step completed."
    if spec.rollout is not None and per_peak:
        during = rollout_safe(per_peak, usable, spec.rollout.max_surge)
        summary += (f" During a rolling update (maxSurge {spec.rollout.max_surge}) at most {during}"
                    f" {replicas_word(during)} fit: old and new pods hold connections at once.")
    waiting = queueing(spec, steps)
    if waiting:
        summary += " " + waiting
    return Verdict(
        max_safe_replicas=max_safe, first_failing_replicas=first_failing, reason=reason, summary=summary
    )


def pooled_verdict(spec: PoolBenchmarkSpec, steps: list[StepResult], pooler: PoolerSpec,
                   rollouts: list[StepResult] | None = None) -> Verdict:
    """A pooled variant: the same steps, judged the same way, explained with the pooler's arithmetic
    (prediction beside measurement)."""
    max_safe, failing = largest_safe(spec, steps)
    per_peak = per_replica_peak(spec)
    budget = pooler_budget(spec, pooler)
    fit = pooled_safe_replicas(spec, pooler)
    fit_text = (f"at most {fit} {replicas_word(fit)} fit the poolers"
                + (" without waiting" if pooler.pool_mode == "session" else ""))
    passed = [s for s in steps if s.outcome == "Passed"]
    measured = ""
    if passed:
        last = max(passed, key=lambda s: s.replicas)
        measured = (f" At {last.replicas} replicas: {last.peak_connections} server backends (predicted ≤"
                    f" {last.predicted_peak}), {last.client_peak_connections} clients at the pooler (predicted"
                    f" {last.predicted_client_peak}), {last.pooler_waiting_peak} waiting at most,"
                    f" p95 latency {last.latency_ms.p95:g} ms.")
    if failing is not None:
        pred = predict(spec, failing.replicas, pooler)
        reason = (f"{failing.replicas} replicas × {per_peak} = {pred.client_peak} clients; {budget};"
                  f" {failing.reason}")
        verb = "were" if failing.outcome == "Inconclusive" else "failed with"
        summary = (f"{pooler.label()}: {max_safe if max_safe is not None else 'no'} replicas ran safely;"
                   f" {failing.replicas} replicas {verb} {failure_cause(failing)} (each replica may open"
                   f" {per_peak} clients; {fit_text}).{measured}")
        first_failing = failing.replicas if failing.outcome == "Failed" else None
    elif max_safe is not None:
        reason = f"every step passed; {budget}"
        opening = passed_opening(max_safe, rollouts or [])
        summary = (f"{pooler.label()}: {opening[0].lower() + opening[1:]} (each may open {per_peak}"
                   f" clients; {fit_text}).{measured}")
        first_failing = None
    else:
        reason, summary, first_failing = "no step ran", f"{pooler.label()}: no step completed.", None
    server, usable = pooler.replicas * pooler.server_connections(), usable_connections(spec)
    if server > usable:
        summary += (f" The poolers may open {server} server connections but the server allows {usable}:"
                    " their logins beyond that are refused (PgBouncer retries them, its clients wait).")
    return Verdict(max_safe_replicas=max_safe, first_failing_replicas=first_failing, reason=reason,
                   summary=summary)


def comparison(names: list[str], verdicts: list[Verdict | None], steps: list[list[StepResult]]) -> str:
    """The variants side by side in one sentence: how far each scaled, and what the server saw."""
    parts = []
    for name, verdict, variant_steps in zip(names, verdicts, steps, strict=True):
        if verdict is None:
            parts.append(f"{name}: not run")
            continue
        peak = max((s.peak_connections for s in variant_steps), default=0)
        safe = verdict.max_safe_replicas
        text = f"{name}: " + (f"{safe} replicas safe" if safe is not None else "no step passed")
        if verdict.first_failing_replicas is not None:
            failing = next((s for s in variant_steps if s.replicas == verdict.first_failing_replicas
                            and s.outcome == "Failed"), None)
            if failing is not None:
                text += f", fails at {failing.replicas} ({failing.first_error_class or failure_cause(failing)})"
        parts.append(text + f", peak {peak} server backends")
    ranked = [(v.max_safe_replicas or 0, n) for n, v in zip(names, verdicts, strict=True) if v is not None]
    best = max(ranked)[0] if ranked else 0
    winners = [n for safe, n in ranked if safe == best and best > 0]
    lead = (f"Scales furthest: {', '.join(winners)} ({best} replicas). " if winners else "")
    return lead + "; ".join(parts) + "."
