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

Operator state lives in kopf's ``memo``: the start-up handler puts the ``Config`` and the key the
passwords are derived from there, and kopf hands a copy to every resource's daemon.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from poolbench.clock import utc_now
from poolbench.core.benchmark import invalid_status
from poolbench.core.spec import API_GROUP, API_VERSION, PLURAL, SpecError, parse_spec
from poolbench.core.steploop import Stopped

from .config import Config
from .driver import TERMINAL, Driver
from .kube import Kube, load_config, operator_key
from .ownapp import OwnAppDriver, restore_after_delete


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
    kube = Kube(namespace)
    try:
        parsed = parse_spec(dict(spec))
    except SpecError as err:
        message = err.message()
        generation = body.get("metadata", {}).get("generation")
        kube.patch_status(name, invalid_status(message, generation, utc_now()).merge_patch(body.get("status")))
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
    message = restore_after_delete(Kube(namespace), dict(spec), dict(status))
    if message:
        logger.info("%s: %s", name, message)
