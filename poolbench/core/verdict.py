"""Verdicts: each step judged from what was measured, and the benchmark's verdict in words, with the
budget's arithmetic (``budget``) beside the measurement.
"""

from __future__ import annotations

import re

from .budget import (
    client_capacity,
    per_process_peak,
    per_replica_idle,
    per_replica_peak,
    pooled_replica_limits,
    predict,
    predicted_safe_replicas,
    rollout_safe,
    server_capacity,
    usable_connections,
)
from .compat import incompatibilities, incompatibilities_text
from .outcomes import DRIVER_SETTING_FIXES
from .results import Compatibility, GhostConnection, PoolerStepResult, StepResult, Verdict, to_snake
from .sampling import BEHIND_FACTOR, advised_interval_ms, fell_behind
from .search import findings, searched
from .spec import MONITOR_CONNECTIONS, LimitsSpec, PoolBenchmarkSpec, PoolerSpec
from .timeline import WindowAccount
from .words import (
    clipped,
    counted,
    placement_words,
    replicas_fit,
    replicas_word,
    session_words,
    short_verdict_words,
)

#: A read of pg_stat_activity and the log's account of the same moment may differ by what changed
#: within this long: the read's snapshot is taken during the query, after its stamp; a backend whose
#: disconnection is logged stays in pg_stat_activity until its process has finished exiting.
READ_TOLERANCE_SECONDS = 0.25
#: A backend beyond what its replica may hold at once must have ended within this long to count as
#: one still exiting (its client closed it and opened a newer one); one that lingers is no such thing.
EXIT_GRACE_SECONDS = 1.0
#: Ghosts listed one by one in the status (all of them are counted).
GHOSTS_LISTED = 50

#: libpq's prefix: 'connection to server at "HOST" (ADDRESS), port N failed: ', where "(ADDRESS)" is
#: there when HOST is a name (a Service name in a cluster), and 'on socket "…"' for a Unix socket;
#: psycopg 3 opens the same message with its own 'connection failed: '.
CONNECTION_PREFIX = re.compile(
    r'^(connection failed: )?(connection to server (at|on) (socket )?"[^"]*"( \([^)]*\))?(, port \d+)? failed: )?'
)


def pooler_budget(spec: PoolBenchmarkSpec, pooler: PoolerSpec) -> str:
    """The pooler arithmetic in one sentence, for verdicts."""
    usable = usable_connections(spec)
    server = server_capacity(pooler)
    per_instance = f"{pooler.default_pool_size}" + (
        f" + {pooler.reserve_pool_size} reserve" if pooler.reserve_pool_size else ""
    )
    text = (
        f"server backends ≤ {pooler.replicas} × ({per_instance}) = {server}"
        + (
            f" of {usable} usable"
            if server <= usable
            else f", more than the {usable} usable: the server refuses the poolers' logins beyond that"
        )
        + f"; clients ≤ {pooler.replicas} × ({pooler.max_client_conn} max_client_conn − 1 monitor) ="
        f" {client_capacity(pooler, pooler.usable_clients())}"
    )
    placement = placement_words(pooler, pooler.usable_clients())
    if placement:
        text += f"; {placement}"
    if pooler.pool_mode == "session":
        free, safe = pooled_replica_limits(spec, pooler)
        text += "; in session mode a client holds its server connection while it is open: " + session_words(
            pooler, per_replica_peak(spec), per_replica_idle(spec), usable, pooler.usable_clients(), free, safe
        )
    return text


def most_open(points: tuple[tuple[float, int], ...], start: float, end: float) -> int:
    """The most connections the account's ``points`` show open at any moment of ``[start, end]``."""
    before = [n for t, n in points if t <= start]
    most = before[-1] if before else (points[0][1] if points else 0)
    for t, n in points:
        if start < t <= end:
            most = max(most, n)
    return most


def apply_server_account(
    step: StepResult, server: WindowAccount | str | None, reads: list[tuple[float, int]] | None = None
) -> StepResult:
    """The server's account beside the reads: the exact peak becomes the step's peak (the sampled one is
    kept), with its refusals and ghosts; a read that saw more than the log shows around its time is a
    disagreement between the witnesses. Without an account the peak stays the sampled one, saying why."""
    step.sampled_peak_connections = step.peak_connections
    if not isinstance(server, WindowAccount):
        step.peak_source = "sampled"
        step.peak_source_reason = server or "this platform does not read the server's log"
        return step
    step.peak_source = "serverLog"
    step.peak_source_reason = None
    step.peak_connections = server.peak
    step.peak_at_seconds = round(server.peak_at - server.start, 3)
    step.refusals = len(server.refusals)
    step.refusals_by_class = dict(sorted(server.refusals_by_cause().items()))
    first = server.first_refusal_at
    step.first_refusal_at = server.iso(first) if first is not None else None
    duration = server.end - server.start
    step.refusals_per_second = round(step.refusals / duration, 3) if duration > 0 else 0.0
    step.server_ghosts = len(server.ghosts)
    step.ghost_connections = [
        GhostConnection(pid=c.pid, replica=c.application_name, age_seconds=round(c.age, 3)).to_text()
        for c in server.ghosts[:GHOSTS_LISTED]
    ]
    # Per replica: what one may hold at once (pooled, the server's backends are the poolers': no such bound).
    per_replica = step.predicted_peak // step.replicas if step.replicas and step.pooler is None else 0
    step.exiting_at_peak = exiting_at_peak(server, per_replica)
    step.server_ended_connections = server.ended_by_server
    step.witness_disagreement = None
    beyond = server.peak - step.usable_connections if step.usable_connections else 0
    if beyond > 0:
        ending = sum(
            1 for c in server.at_peak if c.closed_at is not None and c.closed_at <= server.peak_at + EXIT_GRACE_SECONDS
        )
        if ending >= beyond:
            # Slots handed on: the server frees a backend's slot before it logs the disconnection, and at a
            # full server a waiting connection takes the slot at once. No server holds more than it allows.
            step.peak_connections = step.usable_connections
            step.exiting_at_peak = max(step.exiting_at_peak, beyond)
        else:
            step.witness_disagreement = (
                f"the server's log shows {server.peak} connections open at once, more than the"
                f" {step.usable_connections} the server lets the workload hold, and only {ending} of them ended"
                f" within {EXIT_GRACE_SECONDS:g} s"
            )
    for t, total in reads or []:
        if not server.start <= t <= server.end:
            continue
        shown = most_open(server.points, t - READ_TOLERANCE_SECONDS, t + READ_TOLERANCE_SECONDS)
        if total > shown:
            step.witness_disagreement = (
                f"a read at {t - server.start:.2f} s into the step saw {total} connections where the server's log"
                f" shows at most {shown} within {READ_TOLERANCE_SECONDS:g} s of it"
            )
            break
    return step


def exiting_at_peak(server: WindowAccount, per_replica: int) -> int:
    """Backends open at the peak beyond the ``per_replica`` newest of their replica (by application_name)
    that ended within ``EXIT_GRACE_SECONDS``: a pool that closes a connection and opens the next at once
    (NullPool) has the old backend logged open until it has exited. 0 without a per-replica bound."""
    if per_replica <= 0:
        return 0
    by_replica: dict[str, list[float | None]] = {}
    for connection in sorted(server.at_peak, key=lambda c: c.opened_at, reverse=True):
        by_replica.setdefault(connection.application_name, []).append(connection.closed_at)
    return sum(
        1
        for closes in by_replica.values()
        for closed in closes[per_replica:]
        if closed is not None and closed <= server.peak_at + EXIT_GRACE_SECONDS
    )


def client_witness_disagreement(step: StepResult) -> str | None:
    """The pools' own count of their connections (``clientPeakConnections``) beside the server's exact one,
    where one bounds the other; None when they agree or cannot be compared.

    A pool counts a connection from after its driver returned it (the server logged it authorized before)
    until just before the pool closes it (the server logs its end after): every connection the pools count
    open, the server holds open too, unless the server ended it itself (a FATAL error, a crash: the pool
    counts it until it next uses it). So at every moment, and at the peaks,

        client ≤ server + serverEndedConnections

    and an exact client peak above that is no matter of timing (nor is a coarsened one, an upper bound,
    when the server shows none: a pool's maximum above 0 is exact, so one really held a connection).

    The other way, the server also holds the connects under way (authorized, not yet returned to their
    pool) and the closes still exiting. A pool counts a connect under way against its own limit, so what
    it holds and what it is opening stay within what the arithmetic lets it open (``predictedPeak``), and
    only the backends still exiting come on top (``exitingAtPeak``: those beyond what their replica may
    hold that ended within a second):

        server − exitingAtPeak ≤ predictedPeak, when the pools stayed within it (client ≤ predictedPeak)

    Beyond that the server counted connections that were no pool's (a session of another client's).

    Not compared: without the server's log (the reads miss what happens between them: fewer is no
    disagreement, more is flagged against the log itself); without every replica's account; when a
    replica crashed, restarted or was stopped at the timeout (a dead process's connections are counted
    closed when it was found dead, later than the server saw them go, and a restarted one opens anew while
    the server still holds the old ones); behind a pooler: the pools count their connections to the pooler
    and the server holds the pooler's, which no pool's event bounds, while the pooler's own count (its
    admin console, read like the server's: sampled) holds each client from its login, before the driver
    returns it, until it has processed the close, so a read of it may exceed the pools' exact peak by the
    connects and closes under way, and no read can say how many those were.
    """
    client = step.client_peak_connections
    if step.pooler is not None or step.peak_source != "serverLog" or client is None:
        return None
    if step.crashed_replicas or step.restarts or step.timed_out:
        return None
    server = step.peak_connections
    ended = step.server_ended_connections
    # A coarsened client peak is an upper bound, but one above 0 means a pool really held a connection.
    if client > server + ended and (step.client_peak_exact or server + ended == 0):
        counted_open = f"{client} connections" if step.client_peak_exact else f"connections (at most {client})"
        return (
            f"the pools' own events counted {counted_open} open at once, more than the server's log shows"
            f" at any moment ({server}"
            + (f", and {ended} it ended itself" if ended else "")
            + f"; the reads saw at most {step.sampled_peak_connections})"
        )
    beyond = server - step.exiting_at_peak - step.predicted_peak
    if client <= step.predicted_peak and beyond > 0:
        exiting = f", {step.exiting_at_peak} of them still exiting" if step.exiting_at_peak else ""
        return (
            f"the server's log shows {server} connections open at once{exiting}, {beyond} more than the pools may"
            f" hold and open at once ({step.predicted_peak}), while their own events counted at most {client}"
            f" (the reads saw at most {step.sampled_peak_connections}): {counted(beyond, 'connection')}"
            f" {'was' if beyond == 1 else 'were'} no pool's"
        )
    return None


def apply_client_witness(step: StepResult) -> StepResult:
    """The pools' own count beside the server's (``client_witness_disagreement``), once the replicas reported."""
    found = client_witness_disagreement(step)
    if found:
        step.witness_disagreement = f"{step.witness_disagreement}; {found}" if step.witness_disagreement else found
    return step


def unseen_work(step: StepResult) -> str | None:
    """Statements ran but no witness saw a connection (neither the server's log, nor a read, nor the pools'
    own events): the step's measurement missed its work."""
    if (
        step.queries
        and step.peak_connections == 0
        and step.sampled_peak_connections == 0
        and not step.client_peak_connections
    ):
        seen = []
        if step.peak_source == "serverLog":
            seen.append("the server's log shows none")
        seen.append("no read did")
        if step.client_peak_connections == 0:
            seen.append("the pools' own events counted none")
        return (
            f"{step.queries} statements ran but no witness saw a connection ("
            + ", ".join(seen[:-1])
            + (" and " if len(seen) > 1 else "")
            + seen[-1]
            + ")"
            + (f"; {step.peak_source_reason}" if step.peak_source_reason else "")
        )
    return None


def peak_source_words(step: StepResult) -> str:
    """Where the peak comes from, and what the other witness saw, in a few words for a step's reason."""
    if step.peak_source != "serverLog":
        client = step.client_peak_connections
        if client is not None and client > step.peak_connections:  # the reads missed what the pools held
            bound = "" if step.client_peak_exact else "at most "
            return f" (sampled; the pools' own events counted {bound}{client} at once)"
        return " (sampled)"
    words = " (server log"
    if step.sampled_peak_connections < step.peak_connections:
        words += f"; the reads saw at most {step.sampled_peak_connections}: the rest came and went between them"
    if step.exiting_at_peak and step.peak_connections > step.predicted_peak:
        words += (
            f"; {step.exiting_at_peak} of them still exiting: closed by replicas that had already opened newer"
            " connections"
        )
    return words + ")"


def measurement_doubts(step: StepResult) -> list[str]:
    """What makes the step's measurement itself untrustworthy (Inconclusive, unless something failed):
    the monitor lost its reads, or the pooler's, statements ran unseen, or the witnesses disagree."""
    doubts = []
    if monitor_blind(step):
        total = step.samples + step.sample_gaps
        doubts.append(
            f"the monitor lost {step.sample_gaps} of {total} reads"
            + (f" (last: {step.monitor_error})" if step.monitor_error else "")
        )
    elif step.pooler is not None and step.pooler.sample_gaps * 2 > step.samples:
        # the pooler's side of the step was not seen: its client and wait figures mean nothing
        doubts.append(
            f"the monitor lost {step.pooler.sample_gaps} of the poolers' {step.samples} reads"
            + (f" (last: {step.monitor_error})" if step.monitor_error else "")
        )
    else:
        unseen = unseen_work(step)  # (a blind monitor explains seeing nothing)
        if unseen:
            doubts.append(unseen)
    if step.witness_disagreement:
        doubts.append(f"the witnesses disagree: {step.witness_disagreement}")
    return doubts


def monitor_blind(step: StepResult) -> bool:
    """The monitor lost most of the step's reads (or every one): its peaks mean nothing."""
    return step.samples == 0 or step.sample_gaps > step.samples


def limit_breaches(step: StepResult, limits: LimitsSpec | None) -> list[str]:
    """Each of ``spec.limits`` the step exceeded, naming the limit and the measured value. Judged on
    the step's histogram, where each limit is a bucket edge: exact, and the reported p95 lies on the
    same side of the limit (a step without a histogram is judged on its reported p95)."""
    if limits is None:
        return []
    breaches = []
    for what, name, limit, counts, measured in (
        ("latency", "maxLatencyP95Ms", limits.max_latency_p95_ms, step.latency_histogram, step.latency_ms),
        (
            "checkout wait",
            "maxCheckoutWaitP95Ms",
            limits.max_checkout_wait_p95_ms,
            step.checkout_wait_histogram,
            step.checkout_wait_ms,
        ),
    ):
        if limit is None:
            continue
        histogram = counts.histogram()
        if histogram.exceeds(0.95, limit) if histogram.total else measured.p95 > limit:
            breaches.append(f"{what} p95 {measured.p95:g} ms exceeds limits.{name} {limit:g} ms")
    return breaches


def reads_behind(step: StepResult, interval_ms: float | None) -> str | None:
    """A note when the step's reads fell behind their interval (not a failure: what was read is
    right, there were fewer reads), with the interval the reads' own duration calls for."""
    p99 = step.sample_interval_p99_ms
    if interval_ms is None or p99 is None or not fell_behind(p99, interval_ms):
        return None
    consequence = (
        "the exact peak from the server's log does not depend on it"
        if step.peak_source == "serverLog"
        else "the sampled peak misses what comes and goes between reads"
    )
    return (
        f"the monitor's reads fell behind: {p99:g} ms between reads at p99, more than {BEHIND_FACTOR:g} × the"
        f" {interval_ms:g} ms interval (raise spec.sampling.intervalMs to"
        f" {advised_interval_ms(p99)}; {consequence})"
    )


def judge_step(
    step: StepResult,
    *,
    expected_replicas: int,
    limits: LimitsSpec | None = None,
    interval_ms: float | None = None,
) -> StepResult:
    """Set outcome and reason from what was measured. A step passes only when nothing failed and
    the monitor saw it; a step with no failure whose reads mostly failed is Inconclusive. Reads that
    fell behind ``interval_ms`` (the spec's sampling interval) add a note, never change the outcome."""
    judge_outcome(step, expected_replicas=expected_replicas, limits=limits)
    note = reads_behind(step, interval_ms)
    if note:
        step.reason = f"{step.reason}; {note}" if step.reason else note
    return step


def judge_outcome(step: StepResult, *, expected_replicas: int, limits: LimitsSpec | None = None) -> StepResult:
    """The outcome and its reason (``judge_step`` without the note on the reads' regularity)."""
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
    doubts = measurement_doubts(step)
    if reasons or doubts:
        step.outcome = "Failed" if reasons else "Inconclusive"
        step.reason = "; ".join(reasons + doubts)
        return step
    step.outcome = "Passed"
    if step.pooler is not None:
        pooler = step.pooler
        step.reason = (
            f"peak {step.peak_connections} server backends (at most {pooler.server_capacity}) of"
            f" {step.usable_connections} usable, {pooler.client_peak_connections} clients at the pooler"
            f" ({pooler.waiting_peak} waiting at most, longest wait {pooler.max_wait_ms:g} ms),"
            f" {step.idle_at_end} idle clients at end"
        )
    else:
        step.reason = (
            f"peak {step.peak_connections} of {step.usable_connections} usable connections"
            f"{peak_source_words(step)}, {step.idle_at_end} idle at end"
        )
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
        fix = DRIVER_SETTING_FIXES.get(cls)
        return f"{cls}" + (f" ({clipped(text)})" if text else "") + (f": {fix}" if fix else "")
    if step.timed_out:
        return "a timeout (the replicas did not finish within stepTimeoutSeconds)"
    if step.crashed_replicas:
        return f"{step.crashed_replicas} crashed replicas"
    return step.reason or "errors"


def queueing(spec: PoolBenchmarkSpec, steps: list[StepResult]) -> str:
    """When a replica runs more threads than its pool may open, the threads queue for connections:
    what users feel first is waiting, not errors. Says so with the measured wait, or nothing."""
    cap, threads = per_process_peak(spec), spec.workload.threads
    measured = [s for s in steps if s.checkout_wait_histogram.histogram().total]
    if cap >= threads or not measured:
        return ""
    last = measured[-1]
    who = "each worker process" if spec.workload.processes > 1 else "each replica"
    callers = "tasks" if spec.workload.driver == "asyncpg" else "threads"
    waiting = threads - cap
    return (
        f"{callers.capitalize()} queue for connections: {who} runs {threads} {callers} on at most {cap} pooled"
        f" connections, so {waiting} {'waits' if waiting == 1 else 'wait'} for a checkout"
        f" (mean {last.checkout_wait_ms.mean:g} ms,"
        f" p95 {last.checkout_wait_ms.p95:g} ms, max {last.checkout_wait_ms.max:g} ms at"
        f" {counted(last.replicas, 'replica')})."
    )


def overall_verdict(spec: PoolBenchmarkSpec, steps: list[StepResult], pooler: PoolerSpec | None = None) -> Verdict:
    """maxSafeReplicas: the largest passing step before the first failure."""
    rollouts = [s for s in steps if s.rollout_from is not None]
    steps = [s for s in steps if s.rollout_from is None]
    verdict = (
        pooled_verdict(spec, steps, pooler, rollouts) if pooler is not None else direct_verdict(spec, steps, rollouts)
    )
    verdict.first_failing_replicas = first_failing(largest_safe(spec, steps)[1])
    verdict.predicted_max_safe_replicas = predicted_safe_replicas(spec, pooler)
    for step in rollouts:
        verdict.summary += " " + rollout_line(spec, step, pooler)
    search = spec.search
    if search is not None:
        verdict.summary = (
            f"Search {search.min}..{search.max} in {counted(len(steps), 'step')}:"
            f" {findings(search, steps)}; the arithmetic predicted"
            f" {verdict.predicted_max_safe_replicas}. " + verdict.summary
        )
    return verdict


def first_failing(stopper: StepResult | None) -> int | None:
    """firstFailingReplicas, the one rule for every verdict, table and comparison: the count of the
    step that stopped the run when it failed (an inconclusive step failed nothing)."""
    return stopper.replicas if stopper is not None and stopper.outcome == "Failed" else None


def first_failing_step(verdict: Verdict, steps: list[StepResult]) -> StepResult | None:
    """The measured step (never a rollout's) the verdict's firstFailingReplicas names."""
    if verdict.first_failing_replicas is None:
        return None
    return next(
        (
            s
            for s in steps
            if s.rollout_from is None and s.outcome == "Failed" and s.replicas == verdict.first_failing_replicas
        ),
        None,
    )


def step_cause(step: StepResult) -> str:
    """What failed a step, in a word: its first error's class, the limits it broke, or a timeout."""
    if step.first_error_class:
        return step.first_error_class
    limits = re.findall(r"limits\.\w+", step.reason or "")
    if limits:
        return ", ".join(dict.fromkeys(limits))
    return "timeout" if step.timed_out else str(step.outcome)


def short_verdict(verdict: Verdict | None, steps: list[StepResult]) -> str:
    """``status.shortVerdict``: the verdict's counts and the first failing step's cause, in a few words."""
    if verdict is None:
        return ""
    failing = first_failing_step(verdict, steps)
    cause = step_cause(failing) if failing is not None else ""
    return short_verdict_words(verdict.max_safe_replicas, verdict.first_failing_replicas, cause)


def rollout_line(spec: PoolBenchmarkSpec, step: StepResult, pooler: PoolerSpec | None = None) -> str:
    """A measured rolling update in one sentence: what it was (its first surge: the old replicas kept,
    the surge pods started beside them, no pod replaced), its peak beside the prediction, and what it
    means for the count rolled, in the same words as the verdict's opening."""
    old = step.rollout_from or 0
    rolled, one = counted(old, "replica"), old == 1
    text = (
        f"A rolling update of {rolled} ({step.replicas} pods at once): peak {step.peak_connections}"
        f" connections (predicted {step.predicted_peak}) of {step.usable_connections} usable"
    )
    how = (
        f"measured as its first surge: the {old} old {replicas_word(old)} kept,"
        f" {counted(step.replicas - old, 'surge pod')} started beside {'it' if one else 'them'}, no pod replaced"
    )
    stay = "stays" if one else "stay"
    if step.outcome == "Passed":
        overlap = f"; {step.rollout_overlap.detail}" if step.rollout_overlap is not None else ""
        fits = predict(spec, step.replicas, pooler).fits  # every pod at once, by the one rule
        if not fits:  # the pools opened fewer than they may: the arithmetic's worst case still does not fit
            return (
                f"{text}, Passed ({how}{overlap}), but only because the pools opened fewer connections than"
                f" they may: by the arithmetic {rolled} {'does' if one else 'do'} not stay safe during a"
                " rolling update."
            )
        return f"{text}, Passed ({how}{overlap}): {rolled} {stay} safe during a rolling update."
    if step.outcome == "Failed":
        return (
            f"{text}, Failed with {failure_cause(step)} ({how}): {rolled} {'is' if one else 'are'} safe at"
            " rest but not during a rolling update."
        )
    return (
        f"{text}, Inconclusive: {step.reason} ({how}): whether {rolled} {stay} safe during a rolling update"
        " was not measured."
    )


def passed_opening(max_safe: int, rollouts: list[StepResult]) -> str:
    """The opening of a verdict whose steps all passed: never "All steps passed" when a measured rolling
    update did not."""
    unsafe = [s for s in rollouts if s.outcome != "Passed"]
    if not unsafe:
        return f"All steps passed up to {counted(max_safe, 'replica')}"
    how = "failed" if unsafe[0].outcome == "Failed" else "was inconclusive"
    return (
        f"Every step at rest passed up to {counted(max_safe, 'replica')}, but the rolling update of"
        f" {counted(unsafe[0].rollout_from or 0, 'replica')} {how}"
    )


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


def direct_verdict(
    spec: PoolBenchmarkSpec, steps: list[StepResult], rollouts: list[StepResult] | None = None
) -> Verdict:
    max_safe, failing_step = largest_safe(spec, steps)
    per_peak = per_replica_peak(spec)
    usable = usable_connections(spec)
    role = spec.workload.role
    if failing_step is not None:
        pred = predict(spec, failing_step.replicas)
        reason = (
            f"{counted(failing_step.replicas, 'replica')} × {per_peak} connections = {pred.peak} needed,"
            f" {usable} usable ({spec.postgres.max_connections} max_connections"
            + (f" − {spec.postgres.reserved_for(role)} reserved" if spec.postgres.reserved_for(role) else "")
            + f" − {MONITOR_CONNECTIONS} monitor); {failing_step.reason}"
        )
    elif steps:
        reason = f"every step fit: at most {max(s.peak_connections for s in steps)} of {usable} usable connections"
    else:
        reason = "no step ran"
    safe_limit = rollout_safe(per_peak, usable) if per_peak else None
    if failing_step is not None:
        verb = (
            ("was" if failing_step.replicas == 1 else "were")
            if failing_step.outcome == "Inconclusive"
            else "failed with"
        )
        summary = (
            (f"{counted(max_safe, 'replica')} ran safely;" if max_safe is not None else "No step passed;")
            + f" {counted(failing_step.replicas, 'replica')} {verb} {failure_cause(failing_step)}"
            f" (each replica may open {per_peak}; the server allows {usable}, so at most {replicas_fit(safe_limit)})."
        )
    elif max_safe is not None:
        summary = (
            f"{passed_opening(max_safe, rollouts or [])} (each may open {per_peak};"
            f" at most {replicas_fit(safe_limit)} in {usable} usable connections)."
        )
    else:
        summary = "No step completed."
    if spec.rollout is not None and per_peak:
        during = rollout_safe(per_peak, usable, spec.rollout.max_surge)
        summary += (
            f" During a rolling update (maxSurge {spec.rollout.max_surge}) at most {replicas_fit(during)}:"
            f" old and new pods hold connections at once."
        )
    waiting = queueing(spec, steps)
    if waiting:
        summary += " " + waiting
    return Verdict(
        max_safe_replicas=max_safe, first_failing_replicas=first_failing(failing_step), reason=reason, summary=summary
    )


def pooled_verdict(
    spec: PoolBenchmarkSpec, steps: list[StepResult], pooler: PoolerSpec, rollouts: list[StepResult] | None = None
) -> Verdict:
    """A pooled variant: the same steps, judged the same way, explained with the pooler's arithmetic
    (prediction beside measurement)."""
    max_safe, failing = largest_safe(spec, steps)
    per_peak = per_replica_peak(spec)
    budget = pooler_budget(spec, pooler)
    free, fit = pooled_replica_limits(spec, pooler)
    if pooler.pool_mode == "session":
        fit_text = "session mode: " + session_words(
            pooler, per_peak, per_replica_idle(spec), usable_connections(spec), pooler.usable_clients(), free, fit
        )
    else:
        fit_text = f"at most {replicas_fit(fit)} the poolers"
    placement = placement_words(pooler, pooler.usable_clients())
    if placement:
        fit_text += f"; {placement}"
    passed = [s for s in steps if s.outcome == "Passed"]
    measured = ""
    if passed:
        last = max(passed, key=lambda s: s.replicas)
        at_pooler = last.pooler or PoolerStepResult()
        measured = (
            f" At {counted(last.replicas, 'replica')}: {last.peak_connections} server backends (predicted ≤"
            f" {last.predicted_peak}), {at_pooler.client_peak_connections} clients at the pooler (predicted"
            f" {at_pooler.predicted_client_peak}), {at_pooler.waiting_peak} waiting at most,"
            f" p95 latency {last.latency_ms.p95:g} ms."
        )
    if failing is not None:
        pred = predict(spec, failing.replicas, pooler)
        reason = (
            f"{counted(failing.replicas, 'replica')} × {per_peak} = {pred.client_peak} clients; {budget};"
            f" {failing.reason}"
        )
        verb = ("was" if failing.replicas == 1 else "were") if failing.outcome == "Inconclusive" else "failed with"
        summary = (
            f"{pooler.label()}: "
            + (f"{counted(max_safe, 'replica')} ran safely;" if max_safe is not None else "no step passed;")
            + f" {counted(failing.replicas, 'replica')} {verb} {failure_cause(failing)} (each replica may open"
            f" {per_peak} clients; {fit_text}).{measured}"
        )
        first_failing = failing.replicas if failing.outcome == "Failed" else None
        if pooler.pool_mode == "transaction" and failing.errors.pooler_query_wait_timeout:
            summary += (
                f" In transaction mode clients beyond the {counted(pred.server_capacity, 'server connection')}"
                f" wait for a transaction to end, and these waited longer than query_wait_timeout"
                f" ({pooler.query_wait_timeout_seconds} s): the arithmetic counts connections, not how long"
                f" each transaction holds one (p95 latency {failing.latency_ms.p95:g} ms), so its count fits"
                " the poolers' capacity, not this wait."
            )
    elif max_safe is not None:
        reason = f"every step passed; {budget}"
        opening = passed_opening(max_safe, rollouts or [])
        summary = (
            f"{pooler.label()}: {opening[0].lower() + opening[1:]} (each may open {per_peak}"
            f" clients; {fit_text}).{measured}"
        )
        first_failing = None
    else:
        reason, summary, first_failing = "no step ran", f"{pooler.label()}: no step completed.", None
    server, usable = server_capacity(pooler), usable_connections(spec)
    if server > usable:
        summary += (
            f" The poolers may open {server} server connections but the server allows {usable}:"
            " their logins beyond that are refused (PgBouncer retries them and may turn its clients"
            " away), so more clients than that are not counted safe."
        )
    return Verdict(max_safe_replicas=max_safe, first_failing_replicas=first_failing, reason=reason, summary=summary)


def comparison(
    names: list[str],
    verdicts: list[Verdict | None],
    steps: list[list[StepResult]],
    compatibilities: list[Compatibility | None] | None = None,
) -> str:
    """The variants side by side in one sentence: how far each scaled, and what the server saw. A variant
    whose compatibility probe found the app's statements misbehaving through it is never the winner
    alone: the sentence says so, and names the furthest variant without such findings."""
    found = [incompatibilities(c) for c in compatibilities or [None] * len(names)]
    parts = []
    for name, verdict, variant_steps, count in zip(names, verdicts, steps, found, strict=True):
        if verdict is None:
            parts.append(f"{name}: not run")
            continue
        peak = max((s.peak_connections for s in variant_steps), default=0)
        safe = verdict.max_safe_replicas
        text = f"{name}: " + (f"{counted(safe, 'replica')} safe" if safe is not None else "no step passed")
        if verdict.first_failing_replicas is not None:
            failing = first_failing_step(verdict, variant_steps)
            if failing is not None:
                text += f", fails at {failing.replicas} ({failing.first_error_class or failure_cause(failing)})"
        parts.append(text + f", peak {peak} server backends" + (f", {incompatibilities_text(count)}" if count else ""))
    ranked = [(v.max_safe_replicas or 0, n) for n, v in zip(names, verdicts, strict=True) if v is not None]
    best = max(ranked)[0] if ranked else 0
    winners = [n for safe, n in ranked if safe == best and best > 0]
    lead = f"Scales furthest: {', '.join(winners)} ({counted(best, 'replica')}). " if winners else ""
    flawed = {n: c for n, c in zip(names, found, strict=True) if c}
    if any(n in flawed for n in winners):
        but = "; ".join(
            f"{n} scales furthest, but: {incompatibilities_text(flawed[n])}" for n in winners if n in flawed
        )
        clean = [(safe, n) for safe, n in ranked if n not in flawed]
        clean_best = max(clean)[0] if clean else 0
        clean_winners = [n for safe, n in clean if safe == clean_best and clean_best > 0]
        lead = f"{but} (see its compatibility findings); " + (
            f"without any: {', '.join(clean_winners)} ({counted(clean_best, 'replica')}). "
            if clean_winners
            else "no variant without them passed a step. "
        )
    settings = driver_setting_failures(names, steps)
    if settings:  # no ranking: a variant failed on its driver's configuration, which no pooling choice changes
        lead = "No winner: " + "; ".join(settings) + ". "
    return lead + "; ".join(parts) + "."


def driver_setting_failures(names: list[str], steps: list[list[StepResult]]) -> list[str]:
    """Per variant, the failed attempts of a class that is a driver setting, with its fix: such a variant
    failed on how its driver was configured, not on connection capacity."""
    found = []
    for name, variant_steps in zip(names, steps, strict=True):
        for cls, fix in DRIVER_SETTING_FIXES.items():
            count = sum(getattr(s.errors, to_snake(cls)) for s in variant_steps)
            if count:
                found.append(f"{name} had {counted(count, 'attempt')} fail with {cls}: {fix}")
    return found
