"""Counts and the connection budget in words, shared by verdicts, plans and progress lines (pure), so
that a run and ``poolbench plan`` explain the same arithmetic (``budget``) the same way."""

from __future__ import annotations

import re

from .budget import (
    PLACEMENT_RISK_WORDS,
    OwnAppAnswer,
    PooledCheck,
    PoolsComparison,
    pooled_check,
    server_backends,
    surely_over,
)
from .spec import RESERVE_POOL_TIMEOUT_SECONDS, AppPoolsSpec, PoolerSpec

#: Longest error text quoted in a verdict (a server message can run to several lines).
QUOTED_ERROR_CHARS = 160


def replicas_word(count: int | None) -> str:
    return "replica" if count == 1 else "replicas"


def counted(count: int, noun: str) -> str:
    """A count with its noun, singular for one: '1 replica', '3 replicas', '1 step'."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def short_verdict_words(safe: int | None, failing: int | None, cause: str) -> str:
    """A verdict in a few words, for a table's column: 'safe 2, fails at 8: tooManyClients', 'safe 8,
    none failed', 'fails at 2: timeout', 'nothing judged'."""
    parts = [] if safe is None else [f"safe {safe}"]
    if failing is not None:
        parts.append(f"fails at {failing}" + (f": {cause}" if cause else ""))
    elif safe is not None:
        parts.append("none failed")
    return ", ".join(parts) or "nothing judged"


def replicas_fit(count: int | None) -> str:
    """'at most N replicas fit', with the verb agreeing: '1 replica fits'."""
    return f"{count} replica fits" if count == 1 else f"{count} replicas fit"


def clipped(text: str, limit: int = QUOTED_ERROR_CHARS) -> str:
    """``text`` on one line and at most ``limit`` characters, cut at a word boundary (marked with
    '…'), never inside a word."""
    text = re.sub(r"\s*\n\s*", " ", text.strip())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:") + " …"


def placement_words(pooler: PoolerSpec, capacity: int) -> str:
    """The placement assumption in words for instances that each take ``capacity`` clients (nothing with
    one instance: the count is exact); in session mode also the same rule's other capacity, the server
    connections a client can reach."""
    instances = pooler.replicas
    if instances <= 1:
        return ""
    also = (
        f", or all its {pooler.reachable_server_connections()} server connections to clients the pools keep"
        " open while others wait,"
        if pooler.pool_mode == "session"
        else ""
    )
    return (
        f"connections land on the {instances} PgBouncer instances at random, as through a Service: counted"
        f" safe when the chance that one instance gets more than its {capacity} clients{also} is below"
        f" {PLACEMENT_RISK_WORDS}"
    )


def more_than(count: int, instances: int, capacity: int, what: str) -> str:
    """How ``count`` connections exceed ``capacity`` per instance: surely, or by random placement."""
    if instances <= 1:
        return f"more than the pooler's {capacity} {what}"
    if surely_over(count, instances, capacity):
        return f"more than the {instances} instances' {capacity} {what} each"
    return f"and at random one of the {instances} instances may get more than its {capacity} {what}"


def pooled_failure_words(
    pooler: PoolerSpec, check: PooledCheck, replicas: int, clients: int, kept: int, usable: int, client_capacity: int
) -> str:
    """Why ``replicas`` (opening ``clients``, keeping ``kept``) are not safe, in words."""
    n = pooler.replicas
    if check.cause == "clients":
        monitor = ", one for the monitor" if client_capacity < pooler.max_client_conn else ""
        return (
            f"{replicas} {replicas_word(replicas)} open {clients} clients,"
            f" {more_than(clients, n, client_capacity, 'clients')} (max_client_conn {pooler.max_client_conn}"
            f"{monitor})"
        )
    if check.cause == "server":
        return (
            f"the poolers would open {server_backends(pooler, clients)} server connections of {usable} usable:"
            " the server refuses their logins beyond that"
        )
    timeout = pooler.query_wait_timeout_seconds
    until = (
        f"until query_wait_timeout ({timeout} s) and are disconnected" if timeout else "for good (query_wait_timeout 0)"
    )
    reachable = pooler.reachable_server_connections()
    reserve = (
        f" (its reserve of {pooler.reserve_pool_size} opens only for a client that waited"
        f" reserve_pool_timeout, {RESERVE_POOL_TIMEOUT_SECONDS} s: query_wait_timeout disconnects it first)"
        if pooler.reserve_pool_size and not pooler.reserve_reachable()
        else ""
    )
    return (
        f"the pools of {counted(replicas, 'replica')} keep {counted(kept, 'client')} open for good,"
        f" {holds_all(kept, n, reachable)}{reserve}: the other clients wait {until}"
    )


def holds_all(kept: int, instances: int, server: int) -> str:
    """How ``kept`` clients take every one of an instance's ``server`` connections: surely, or by
    random placement (``session_starves``)."""
    if instances <= 1:
        return f"enough to hold all the pooler's {server} server connections"
    if kept >= instances * server:  # every instance's connections, wherever the kept clients land
        return f"enough to hold all {server} server connections of each of the {instances} instances"
    return f"and at random they may hold all {server} server connections of one of the {instances} instances"


def session_words(
    pooler: PoolerSpec, peak: int, idle: int, usable: int, client_capacity: int, free: int, safe: int
) -> str:
    """Session mode's regimes for replicas opening ``peak`` and keeping ``idle`` clients each: fits
    without waiting up to ``free``, waits beyond, fails beyond ``safe`` (``pooled_limits``)."""
    over = safe + 1
    check = pooled_check(pooler, over * peak, over * idle, usable, client_capacity)
    fails = "fails" if pooler.replicas == 1 else "may fail"
    why = pooled_failure_words(pooler, check, over, over * peak, over * idle, usable, client_capacity)
    if free == 0:  # already one replica's clients wait, or fail
        return (
            f"waits from 1 replica (a waiting client runs when an overflow client disconnects), {fails} beyond"
            f" {safe} ({why})"
            if safe > 0
            else f"{fails} from 1 replica ({why})"
        )
    waits = (
        f", waits beyond (a waiting client runs when an overflow client disconnects), {fails} beyond {safe}"
        if safe > free
        else f", {fails} beyond"
    )
    return f"fits without waiting up to {counted(free, 'replica')}{waits} ({why})"


def surge_words(max_surge: int | str | None, surge: int) -> str:
    """'+ 25% surge (5 pods)', '+ 2 surge pods', '' without a surge."""
    if max_surge is None:
        return ""
    if isinstance(max_surge, str):
        return f" + {max_surge} surge ({counted(surge, 'pod')})"
    return f" + {counted(surge, 'surge pod')}"


def own_app_short_words(answer: OwnAppAnswer) -> str:
    """The live answer in a few words, for a table's column: 'safe 6, 5 in a rollout, refused at 7'."""
    a = answer
    if a.per_pod == 0:
        return "nothing measured per pod"
    return f"safe {a.safe_at_rest}, {a.safe_in_rollout} in a rollout, refused at {a.refusals_from}"


def own_app_words(answer: OwnAppAnswer) -> str:
    """The live answer in one sentence, every number the answer's: what the app's replicas (its HPA's
    maximum, else its current count) need through a rollout, what the others leave, and where refusals
    start."""
    a = answer
    left = (
        f"{a.available} of {a.usable} usable are left after {a.others} used by others"
        if a.available >= 0
        else f"the others already use {a.others} of the {a.usable} usable"
    )
    if a.per_pod == 0:
        return f"no connections measured per pod (0): the watch says nothing about how many replicas fit; {left}"
    target, label = (a.hpa_max, "your HPA's max of") if a.hpa_max is not None else (a.replicas, "")
    head = (
        f"at your measured {a.per_pod} per pod"
        if a.per_pod_from == "measured"
        else f"nothing measured per pod, so at your pools' predicted {a.per_pod} per pod"
    )
    if target is not None:
        pods = counted(target, "replica")
        what = f"{label} {pods}" if label else pods
        head += f", {what}{surge_words(a.max_surge, a.surge(target))} need {a.needed(target)}"
    if a.available < 0 or a.safe_in_rollout == 0:
        ends = f"refusals start at {counted(a.refusals_from, 'replica')}" + (
            " (the others alone are over)" if a.available < 0 else ""
        )
    else:
        surge = "" if a.max_surge is not None else " (no surge)"
        fits = f"{a.safe_at_rest} fit at rest, {a.safe_in_rollout} through a rollout{surge}"
        ends = f"{fits}; refusals start at {counted(a.refusals_from, 'replica')}"
        if a.max_surge is not None:
            ends += f" ({a.refusals_from} + {a.surge(a.refusals_from)} surge need {a.needed(a.refusals_from)})"
    return f"{head}; {left}: {ends}"


def pools_how(pools: AppPoolsSpec) -> str:
    """Where the pools' per-pod peak comes from, as ``budget.process_peak`` counts it: '5 + 10 overflow',
    '3 processes × (8 threads under pool 5 + 10 overflow)', 'NullPool, one per thread: 4 threads'."""
    engine, threads = pools.engine, counted(pools.threads, "thread")
    if engine.pool_class == "StaticPool":
        per_process = "StaticPool, one"
    elif engine.pool_class in ("NullPool", "SingletonThreadPool"):
        per_process = f"{engine.pool_class}, one per thread: {threads}"
    else:
        size, overflow = engine.effective_pool_size(), engine.effective_max_overflow()
        if size == 0 or overflow < 0:
            unbounded = "poolSize 0" if size == 0 else "maxOverflow -1"
            per_process = f"{threads}, no pool limit ({unbounded})"
        elif pools.threads < size + overflow:
            per_process = f"{threads} under pool {size} + {overflow} overflow"
        else:
            per_process = f"{size} + {overflow} overflow"
    if pools.processes == 1:
        return per_process
    return f"{pools.processes} processes × ({per_process})"


def pools_words(pools: AppPoolsSpec, comparison: PoolsComparison) -> str:
    """Predicted beside measured per pod, and plainly when the pods held more than their pools allow."""
    c = comparison
    measured = f"measured {c.measured_peak}" if c.measured_peak else "none measured"
    words = f"predicted {c.predicted_peak} per pod from your pools ({pools_how(pools)}), {measured}"
    if c.over:
        words += (
            f": a pod held {c.measured_peak - c.predicted_peak} more than its pools allow, so a pool setting is"
            " not what spec.target.pools says (poolClass, poolSize, maxOverflow, threads, processes) or a"
            " process has more than one engine"
        )
    return words
