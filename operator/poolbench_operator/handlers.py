"""kopf handlers: thin, they only wire kopf to the driver (``kopf run -m poolbench_operator.handlers``).

Why a daemon and not a ``status.phase`` state machine: a step samples pg_stat_activity every
20-100 ms through one monitor connection that must stay open for the whole benchmark (so it holds
its slot before the load) and keep peak-hold state between reads. A per-resource daemon keeps that
connection and state in one place; it is sync (kopf runs it in a thread, so the event loop is
never blocked) and writes status through its own client, throttled to about one patch a second.
Resuming is still status-driven: after a restart the daemon starts again and continues from the
first step that status does not show as finished.
"""

from __future__ import annotations

import logging
import os

import kopf

from poolbench.benchmark import utc_now
from poolbench.spec import API_GROUP, API_VERSION, PLURAL, SpecError, parse_spec

from .driver import Driver, Stopped
from .kube import Kube, load_config, operator_key

WORKLOAD_IMAGE = os.environ.get("POOLBENCH_WORKLOAD_IMAGE", "poolbench-workload:dev")
# Each running benchmark holds one executor thread (a sync daemon) for its whole run; the default
# pool (cores + 4 threads) would let only a handful run at once and starve the rest.
OPERATOR: dict[str, bytes] = {}  # the key passwords are derived from (credentials.py), read at start-up
MAX_CONCURRENT_BENCHMARKS = int(os.environ.get("POOLBENCH_MAX_CONCURRENT", "64"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.peering.standalone = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = int(os.environ.get("POOLBENCH_WATCH_TIMEOUT", "300"))
    settings.persistence.finalizer = "poolbench.dev/finalizer"
    settings.execution.max_workers = MAX_CONCURRENT_BENCHMARKS + 8
    load_config()
    OPERATOR["key"] = operator_key()


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=15.0, initial_delay=0.5,
             when=lambda status, **_: (status or {}).get("phase") not in ("Completed", "Failed", "Invalid"))
def run_benchmark(body: kopf.Body, spec: kopf.Spec, namespace: str, name: str, stopped: kopf.DaemonStopped,
                  logger: logging.Logger, **_) -> None:
    kube = Kube(namespace)
    try:
        parsed = parse_spec(dict(spec))
    except SpecError as err:
        message = err.message()
        kube.patch_status(name, {"phase": "Invalid", "message": message, "updatedAt": utc_now()})
        kopf.warn(body, reason="Invalid", message=message)
        logger.warning("invalid PoolBenchmark: %s", message)
        return

    def adopt(child: dict) -> None:
        kopf.adopt(child, owner=body)

    def event(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    driver = Driver(kube=kube, body=dict(body), spec=parsed, stopped=stopped, adopt=adopt, event=event,
                    logger=logger, workload_image=WORKLOAD_IMAGE, key=OPERATOR["key"])
    try:
        driver.execute()
    except Stopped:
        return
    except Exception as err:  # the environment broke: a terminal, visible Failed, never a silent hang
        logger.exception("benchmark failed")
        driver.fail(f"{type(err).__name__}: {err}")
