"""kopf handlers: thin, they only wire kopf to the driver (``kopf run -m poolbench_operator.handlers``).

Why a daemon and not a ``status.phase`` state machine: a step samples pg_stat_activity every
20-100 ms through one monitor connection that must stay open for the whole benchmark (so it holds
its slot before the load) and keep peak-hold state between reads. A per-resource daemon keeps that
connection and state in one place; it is sync (kopf runs it in a thread, so the event loop is
never blocked) and writes status through its own client, throttled to about one patch a second.
Resuming is still status-driven: after a restart the daemon starts again and continues from the
first step that status does not show as finished.

A benchmark of the user's own Deployment and server (spec.target + spec.database) runs in the same
daemon through ``ownapp.OwnAppDriver``; a Step one also has a deletion handler that puts the
Deployment's replica count back from status before the resource goes.

Operator state lives in kopf's ``memo``: the start-up handler puts the ``Config``, the key the
passwords are derived from and the metrics state there, and kopf hands a copy to every resource's
daemon. The start-up handler also starts the ``/metrics`` server (its own thread, never kopf's loop);
the drivers publish into the metrics state from the status they write, and a watch-event handler drops
a deleted benchmark's series and serves a finished one's after an operator restart (no daemon runs it).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import kopf

from poolbench.clock import utc_now
from poolbench.core.benchmark import invalid_status, status_from_resource
from poolbench.core.spec import API_GROUP, API_VERSION, PLURAL, SpecError, parse_spec
from poolbench.core.steploop import Stopped

from .config import Config
from .driver import TERMINAL, Driver
from .exporter import serve
from .kube import Kube, load_config, operator_key
from .metricstate import MetricState, from_benchmark, from_own_app
from .ownapp import OwnAppDriver, restore_after_delete

#: The process's one metrics state: the daemons write it, the ``/metrics`` thread reads it.
METRICS = MetricState()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Config.from_env()
    settings.peering.standalone = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = config.watch_timeout_seconds
    settings.persistence.finalizer = "poolbench.dev/finalizer"
    # Each running benchmark holds one executor thread (a sync daemon) for its whole run; the default
    # pool (cores + 4 threads) would let only a handful run at once and starve the rest.
    settings.execution.max_workers = config.max_concurrent_benchmarks + 8
    load_config()
    memo.config = config
    memo.key = operator_key(config.operator_namespace())
    memo.metrics = METRICS
    if config.metrics_port:
        serve(METRICS, config.metrics_port)


def unfinished(status: kopf.Status, **_: Any) -> bool:
    """A finished benchmark (any terminal phase) gets no daemon: it is never measured twice."""
    return status.get("phase") not in TERMINAL


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=15.0, when=unfinished)
def run_benchmark(
    body: kopf.Body,
    spec: kopf.Spec,
    namespace: str | None,
    name: str | None,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None
    assert name is not None
    metrics: MetricState = memo.metrics
    metrics.count(reconciles=1, running_benchmarks=1)
    try:
        run_one(body, spec, namespace, name, stopped, logger, memo, metrics)
    finally:
        metrics.count(running_benchmarks=-1)


def run_one(
    body: kopf.Body,
    spec: kopf.Spec,
    namespace: str,
    name: str,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    memo: kopf.Memo,
    metrics: MetricState,
) -> None:
    kube = Kube(namespace, metrics)
    try:
        parsed = parse_spec(dict(spec))
    except SpecError as err:
        message = err.message()
        generation = body.get("metadata", {}).get("generation")
        status = invalid_status(message, generation, utc_now())
        kube.patch_status(name, status.merge_patch(body.get("status")))
        metrics.publish(
            namespace,
            name,
            from_benchmark(namespace, name, status, named_variants=False, live_by_state={}, progress_at=time.time()),
        )
        kopf.warn(body, reason="Invalid", message=message)
        logger.warning("invalid PoolBenchmark: %s", message)
        return

    def adopt(child: dict[str, Any]) -> None:
        kopf.adopt(child, owner=body)

    def event(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    if parsed.target is not None:  # the user's own Deployment and server: nothing of ours is provisioned
        own = OwnAppDriver(
            kube=kube,
            body=dict(body),
            spec=parsed,
            stopped=stopped,
            adopt=adopt,
            event=event,
            logger=logger,
            config=memo.config,
            metrics=metrics,
        )
        try:
            own.execute()
        except Stopped:
            return
        return

    driver = Driver(
        kube=kube,
        body=dict(body),
        spec=parsed,
        stopped=stopped,
        adopt=adopt,
        event=event,
        logger=logger,
        config=memo.config,
        key=memo.key,
        metrics=metrics,
    )
    try:
        driver.execute()
    except Stopped:
        return
    except Exception as err:  # the environment broke: a terminal, visible Failed, never a silent hang
        logger.exception("benchmark failed")
        driver.fail(f"{type(err).__name__}: {err}")


def steps_own_app(spec: kopf.Spec, **_: Any) -> bool:
    """A benchmark that may have changed the user's Deployment (spec.target in mode Step)."""
    target = spec.get("target") or {}
    return bool(target) and target.get("mode") == "Step"


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, retries=6, backoff=5, when=steps_own_app)
def restore_on_delete(
    spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A Step benchmark deleted mid-step: the Deployment's replica count goes back (from status) before
    the resource goes. The daemon, stopped by the deletion, does the same; either one is enough."""
    assert namespace is not None
    METRICS.count(reconciles=1)
    message = restore_after_delete(Kube(namespace, METRICS), dict(spec), dict(status))
    if message:
        logger.info("%s: %s", name, message)


def metrics_change(type: str | None, status: kopf.Status, namespace: str | None, name: str | None, **_: Any) -> bool:
    """A deletion, or a finished benchmark this operator has not published: every other watch event
    (a status patch a second while a daemon runs) is filtered out before a handler (or its log line)."""
    if type == "DELETED":
        return True
    return status.get("phase") in TERMINAL and not METRICS.known(namespace or "", name or "")


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, when=metrics_change)
def follow_for_metrics(
    type: str | None,  # kopf's name for the watch event's type
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str | None,
    name: str | None,
    **_: Any,
) -> None:
    """A deleted benchmark's series go; a benchmark no daemon publishes (finished before this operator
    started) is served from the status it has."""
    assert namespace is not None
    assert name is not None
    if type == "DELETED":
        METRICS.forget(namespace, name)
        return
    if METRICS.known(namespace, name):
        return
    if status.get("phase") not in TERMINAL:
        return  # a daemon runs it and publishes
    seen = status_from_resource(Kube(namespace, METRICS).with_results(dict(status)))
    if seen is None:
        return
    now = datetime.fromisoformat(seen.updated_at).timestamp() if seen.updated_at else time.time()
    if spec.get("target"):
        usable = seen.database.usable_for_normal_role if seen.database else 0
        variants = from_own_app(namespace, name, seen, usable=usable, live_by_state={}, progress_at=now)
    else:
        variants = from_benchmark(
            namespace, name, seen, named_variants=bool(spec.get("variants")), live_by_state={}, progress_at=now
        )
    METRICS.publish(namespace, name, variants)
