"""One benchmark in a cluster: provision the children, run the step loop on pods, clean up.

The step loop itself is the core's (``poolbench.core.steploop``), watched by the monitor
(``poolbench.db.monitor``); the driver is its Kubernetes ``Platform``: scale patches the workload
Deployment, observe reads the pods (restarts, termination messages, live metrics through the API
server's pod proxy), the StatefulSet brings a dead database back by itself, and progress becomes
throttled status patches and Events. The status is the whole state, written as it goes, so after an
operator restart the loop resumes where status says and never redoes a finished step.

With ``spec.variants`` each variant has its own workload Deployment; ``use_variant`` points scale,
observe and collect at it and, for a pooled variant, waits for its PgBouncer pods and hands the
monitor their admin consoles (one connection per pod, by pod IP).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions

from poolbench.clock import utc_now
from poolbench.core.benchmark import BenchmarkRun, PlannedStep, ReplicaReport, status_from_resource
from poolbench.core.children import (
    POSTGRES_PORT,
    Credentials,
    Names,
    build_children,
    build_results_config_map,
    child_action,
    child_refs,
    mounted_secrets,
    stamped_hash,
    variant_names,
)
from poolbench.core.compat import ClientTarget
from poolbench.core.pooler import ADMIN_DATABASE, ADMIN_USER, LISTEN_PORT
from poolbench.core.results import TERMINAL_PHASES
from poolbench.core.serverlog import ADMIN_NAME
from poolbench.core.spec import PoolBenchmarkSpec, PoolerSpec
from poolbench.core.steploop import (
    BenchmarkFinished,
    DatabaseRestarted,
    LoopEvent,
    LoopTiming,
    PoolerConsole,
    Progress,
    ReplicaProgress,
    StepFinished,
    StepStarted,
    Stopped,
    run_steps,
)
from poolbench.core.workload_env import DATABASE, SUPERUSER, role_name
from poolbench.db.monitor import Monitor
from poolbench.db.roles import ensure_app_role

from . import podstate
from .config import Config
from .credentials import derive_password
from .kube import Kube, running_images
from .metricstate import MetricState, from_benchmark

TERMINAL = TERMINAL_PHASES
PATCH_INTERVAL = 1.2  # seconds after any status patch of one resource before a routine one: under one a second
DRAIN_SECONDS = 15.0
SCRAPERS = 8  # replicas' metrics read at once
PROVISION_TIMEOUT = 300.0
SCALE_DOWN_TIMEOUT = 120.0
LOG_SETTLE_SECONDS = 10.0  # the first look at the PostgreSQL pod's log, before the first step
SCALE_DOWN_WATCH_SECONDS = 2.0  # one watch of the scale-down at a time, so a stop is noticed between two


class ChildConflict(Exception):
    """An object with a child's kind and name exists and is not this benchmark's: left alone, reported."""


class StopFlag(Protocol):
    """kopf's ``DaemonStopped`` as the driver uses it: a wait whose result is true once stopped."""

    def wait(self, timeout: float | None = None) -> object: ...


EventPoster = Callable[[str, str, str], None]  # (type, reason, message)
Logger = logging.Logger | logging.LoggerAdapter[Any]  # kopf hands each handler an adapter


def postgres_host(kube: Kube, names: Names, address: str) -> tuple[str, int]:
    """Where the operator reaches Postgres (``Config.postgres_address``). In the cluster, the
    Service's DNS name; outside it, ``pod-ip`` (routable pod IPs) or ``HOST:PORT`` (a port-forward
    or kind NodePort)."""
    if address == "service":
        return f"{names.postgres}.{kube.namespace}.svc", POSTGRES_PORT
    if address == "pod-ip":
        ip = kube.postgres_pod_ip(names)
        if not ip:
            raise RuntimeError(f"pod {names.postgres_pod} has no IP yet")
        return ip, POSTGRES_PORT
    host, _, port = address.rpartition(":")
    return host, int(port)


class Driver:
    """Runs one PoolBenchmark to a terminal phase; implements the step loop's ``Platform``."""

    def __init__(
        self,
        *,
        kube: Kube,
        body: dict[str, Any],
        spec: PoolBenchmarkSpec,
        stopped: StopFlag,
        adopt: Callable[[dict[str, Any]], None],
        event: EventPoster,
        logger: Logger,
        config: Config,
        key: bytes,
        metrics: MetricState | None = None,
    ):
        self.kube = kube
        self.name: str = body["metadata"]["name"]
        self.names = Names(self.name)
        self.spec = spec
        self.stopped = stopped
        self.adopt = adopt
        self.event = event
        self.logger = logger
        self.config = config
        self.metrics = metrics
        self.uid: str = body["metadata"]["uid"]
        self.superuser_password = derive_password(key, self.uid, "superuser")
        self.app_password = derive_password(key, self.uid, "app")
        self.pooler_admin_password = derive_password(key, self.uid, "pooler-admin")
        self.run = BenchmarkRun(spec, status_from_resource(kube.with_results(body.get("status"))), clock=utc_now)
        self.run.status.observed_generation = body["metadata"].get("generation")
        self.keeps_last_step = spec.cleanup == "Keep"
        self.last_patch = 0.0
        #: The results ConfigMap may not be written (its name is someone else's, or it would be too
        #: large): the whole status is not saved again.
        self.results_stopped = False
        #: The status as last written, so that a field left out since is nulled in the next merge patch.
        self.written: dict[str, Any] | None = body.get("status")
        self.t0 = time.monotonic()
        self.views: list[podstate.PodView] = []
        #: The variant being measured (``use_variant``); None before the first, and without variants.
        self.variant: str | None = None
        self.workload_names = self.names  # the Deployment scale/observe/collect act on
        self.timing = LoopTiming(poll_seconds=config.poll_seconds, drain_seconds=DRAIN_SECONDS)
        #: Container name → image digest of what ran during the step being measured (``StepResult.images``).
        self.images: dict[str, str] = {}

    # -- status ---------------------------------------------------------------------------------
    def patch(self, force: bool = False) -> None:
        """Write status. Routine progress is skipped within PATCH_INTERVAL of the last patch; a boundary
        (force: provisioning, a step's start and end, the verdict, a failure) is written at once, never
        held back to a timer: there are at most two a step, so the resource still gets about one patch
        a second, and the next step or the verdict is not delayed by the one before. The metrics are
        published from the same status object at every call, throttled or not."""
        self.publish()
        if not force and time.monotonic() - self.last_patch < PATCH_INTERVAL:
            return
        self.run.status.updated_at = utc_now()
        if force:
            self.save_results()
        self.kube.patch_status(self.name, self.run.status.merge_patch(self.written))
        self.written = self.run.status.summary_json()
        self.last_patch = time.monotonic()

    def save_results(self) -> None:
        """Write the whole status (every step's detail) to the results ConfigMap, before the summary
        that names it: at a step's start and end, the verdict and a failure. The ConfigMap is the
        benchmark's own, so it goes with it."""
        if self.results_stopped:
            return
        named_before = self.run.status.results_config_map
        self.run.status.results_config_map = self.names.results
        text = json.dumps(self.run.status.to_json(), sort_keys=False)
        config_map = build_results_config_map(self.name, text)
        self.adopt(config_map)
        outcome = self.kube.write_results(config_map, self.uid)
        if outcome == "written":
            return
        # Not written, and it would not be next time either (the name stays taken, the status only grows).
        self.results_stopped = True
        kept = "each step's detail (latencies, histograms, per-replica peaks)"
        if outcome == "foreign":  # someone else's ConfigMap: left as it is, and the status does not point at it
            self.run.status.results_config_map = ""
            message = (
                f"ConfigMap {self.names.results} already exists and is not this benchmark's: it is left as it"
                f" is, and {kept} is not kept; the status keeps each step's summary. Delete or rename that"
                " ConfigMap, or give the benchmark another name."
            )
        else:  # the copy written last (if any) stays: the steps it holds keep their detail
            self.run.status.results_config_map = named_before
            message = (
                f"the whole status ({len(text):,} bytes of JSON) is more than ConfigMap {self.names.results} may"
                f" hold (1 MiB): {kept} is kept for the steps written before, the status keeps each step's"
                " summary. Fewer steps or variants per benchmark keep it whole."
            )
        self.logger.warning(message)
        self.event("Warning", "ResultsNotKept", message)

    def publish(self) -> None:
        if self.metrics is None:
            return
        accumulator = self.run.accumulator
        self.metrics.publish(
            self.kube.namespace,
            self.name,
            from_benchmark(
                self.kube.namespace,
                self.name,
                self.run.status,
                named_variants=bool(self.spec.variants),
                live_by_state=accumulator.live_by_state if accumulator is not None else {},
                progress_at=time.time(),
            ),
        )

    # -- phases ---------------------------------------------------------------------------------
    def execute(self) -> None:
        if self.run.status.phase in TERMINAL:
            return
        try:
            self.provision()
            self.wait_for_postgres()
            self.measure()
        except Stopped:
            self.logger.info("stopped; status keeps what was measured")
            raise
        except ChildConflict as err:
            self.fail(str(err))

    def provision(self) -> None:
        if self.run.status.phase in ("Pending", ""):
            self.run.provisioning("creating PostgreSQL and the workload")
            self.patch(force=True)
        children = build_children(
            self.name,
            self.spec,
            workload_image=self.config.workload_image,
            operator_namespace=self.config.operator_namespace(),
            credentials=Credentials(self.superuser_password, self.app_password, self.pooler_admin_password),
        )
        secrets_by_name = {c["metadata"]["name"]: c for c in children if c["kind"] == "Secret"}
        for child in children:
            self.adopt(child)
            self.provide(child, secrets_by_name)

    def provide(self, child: dict[str, Any], secrets_by_name: dict[str, dict[str, Any]]) -> None:
        """Create ``child``, or check the one there: kept when it is this benchmark's and built from the
        same inputs (its spec hash), replaced when built from others (an operator upgrade, a new
        workload image), and a ``ChildConflict`` when it is not this benchmark's. A Secret is not read
        (the operator may create and delete Secrets, never read them): it is recreated with the pod
        template that mounts it, whose hash covers its contents."""
        kind, name = child["kind"], child["metadata"]["name"]
        if self.kube.ensure(child):
            self.logger.info("created %s %s", kind, name)
            return
        if kind == "Secret":
            return
        existing = self.kube.read_child(kind, name)
        action = child_action(child, existing, self.uid)
        if action == "keep":
            return
        if action == "foreign":
            raise ChildConflict(
                f"{kind} {name} already exists and is not this benchmark's (no owner reference to it): it is left"
                f" as it is; delete or rename it, or give the benchmark another name"
            )
        for secret in mounted_secrets(child):
            if secret in secrets_by_name:
                self.kube.recreate(secrets_by_name[secret])
        self.kube.replace_child(child, existing)
        message = (
            f"{kind} {name} was built from other inputs (spec hash {stamped_hash(existing) or 'none'},"
            f" now {stamped_hash(child)}): replaced"
        )
        self.logger.info(message)
        self.event("Normal", "ChildReplaced", message)

    def wait_for_postgres(self) -> None:
        """Until the pod is ready and then until a connection through the Service actually succeeds: a
        ready pod's endpoint reaches kube-proxy's rules a moment later (until then the Service answers
        "Connection refused"), and the monitor's first connection must not fail the benchmark for it."""
        deadline = time.monotonic() + PROVISION_TIMEOUT
        while not self.kube.postgres_ready(self.names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL was not ready after {PROVISION_TIMEOUT:.0f}s")
            self.wait(self.timing.poll_seconds)
        while True:
            try:
                self.connect(application_name=ADMIN_NAME).close()  # poolbench's own: no witness counts it
                return
            except (psycopg2.OperationalError, RuntimeError) as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL was ready but not reachable after {PROVISION_TIMEOUT:.0f}s:"
                        f" {' '.join(str(err).split())}"
                    ) from None
            self.wait(self.timing.poll_seconds)

    def connect(self, **extra: Any) -> psycopg2.extensions.connection:
        """A superuser connection; the address is resolved each time (a restarted pod has a new IP)."""
        host, port = postgres_host(self.kube, self.names, self.config.postgres_address)
        conn: psycopg2.extensions.connection = psycopg2.connect(
            host=host,
            port=port,
            user=SUPERUSER,
            password=self.superuser_password,
            dbname="postgres",
            connect_timeout=5,
            **extra,
        )
        return conn

    def ensure_app_role(self) -> None:
        """The normal role for ``role: app``; again after a database restart (emptyDir: a new cluster)."""
        if self.spec.workload.role != "app":
            return
        ensure_app_role(self.connect, self.app_password)

    def measure(self) -> None:
        self.ensure_app_role()
        server_log = self.kube.follow_postgres_log(self.names)  # the monitor closes it
        why = server_log.wait_settled(LOG_SETTLE_SECONDS)
        if why:
            self.logger.warning(
                "the PostgreSQL pod's log is not read; steps report sampled peaks while it is not: %s", why
            )
        monitor = Monitor(self.connect, self.spec.sampling.interval_ms / 1000, self.t0, log=server_log)
        monitor.start()  # before any load, so it holds its slot
        try:
            run_steps(self.run, self, monitor, self.timing)
        finally:
            monitor.stop()
        self.cleanup()

    def pooled_variants(self) -> list[tuple[str, PoolerSpec]]:
        return [(v.name, v.pooler) for v in self.spec.variants or [] if v.pooler is not None]

    def cleanup(self) -> None:
        policy = self.spec.cleanup
        if policy == "Delete":
            self.kube.delete_children(child_refs(self.name, self.spec))
            self.event("Normal", "Cleanup", "children deleted (spec.cleanup: Delete); status kept")
        elif policy == "ScaleDown":
            # PgBouncer keeps server connections open up to server_idle_timeout: a finished benchmark
            # holds none, so its poolers go to 0 with the workload; PostgreSQL stays for inspection.
            for variant, _ in self.pooled_variants():
                self.kube.scale_deployment(Names(self.name, variant).pooler, 0)
            scaled = "workload and PgBouncer scaled to 0" if self.pooled_variants() else "workload scaled to 0"
            self.event("Normal", "Cleanup", f"{scaled}; PostgreSQL kept for inspection")

    def fail(self, message: str) -> None:
        self.run.fail(message)
        self.patch(force=True)
        self.event("Warning", "Failed", message)

    # -- the step loop's Platform -------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def wait(self, seconds: float) -> None:
        if self.stopped.wait(seconds):
            raise Stopped()

    def use_variant(self, planned: PlannedStep) -> Sequence[PoolerConsole]:
        """Measure ``planned``'s variant from now on: its workload Deployment, and for a pooled one
        its PgBouncer pods (ready first), whose admin consoles it returns."""
        self.variant = planned.tag or None
        self.workload_names = Names(self.name, self.variant)
        pooler = planned.pooler
        if pooler is None or self.variant is None:
            return []
        names = self.workload_names
        self.kube.scale_deployment(names.pooler, pooler.replicas)  # idempotent; back up if scaled down
        self.wait_for_pooler(self.variant, pooler)
        if self.config.postgres_address not in ("service", "pod-ip"):
            message = (
                f"variant {self.variant}: PgBouncer's admin console is reached by pod IP, not through"
                f" POOLBENCH_POSTGRES_ADDRESS={self.config.postgres_address}; the pooler is not sampled"
            )
            self.logger.warning(message)
            self.event("Warning", "PoolerNotSampled", message)
            return []
        return [functools.partial(self.pooler_connect, self.variant, i) for i in range(pooler.replicas)]

    def wait_for_pooler(self, variant: str, pooler: PoolerSpec) -> None:
        deadline = time.monotonic() + PROVISION_TIMEOUT
        while len(self.kube.pooler_pod_ips(self.name, variant)) < pooler.replicas:
            if time.monotonic() > deadline:
                raise RuntimeError(f"variant {variant}: PgBouncer was not ready after {PROVISION_TIMEOUT:.0f}s")
            self.wait(self.timing.poll_seconds)

    def pooler_connect(self, variant: str, index: int) -> psycopg2.extensions.connection:
        """Pooler instance ``index``'s admin console; the pod's IP is looked up each time (a
        restarted pod has a new one)."""
        ips = self.kube.pooler_pod_ips(self.name, variant)
        if index >= len(ips):
            raise RuntimeError(f"PgBouncer instance {index + 1} of variant {variant} is not ready")
        return psycopg2.connect(
            host=ips[index],
            port=LISTEN_PORT,
            user=ADMIN_USER,
            password=self.pooler_admin_password,
            dbname=ADMIN_DATABASE,
            connect_timeout=5,
        )

    def probe_target(self, planned: PlannedStep) -> ClientTarget | None:
        """The workload's login at the variant's first PgBouncer pod, for the compatibility probe."""
        ips = self.kube.pooler_pod_ips(self.name, self.variant) if planned.pooler and self.variant else []
        if not ips or self.config.postgres_address not in ("service", "pod-ip"):
            return None
        app = self.spec.workload.role == "app"
        password = self.app_password if app else self.superuser_password
        return ClientTarget(ips[0], LISTEN_PORT, role_name(self.spec.workload), DATABASE, password)

    def scale(self, planned: PlannedStep) -> None:
        """A rolling update's surge (``planned.replicas`` beyond its old replicas, already running) is the
        Deployment's own: a new pod template, which its RollingUpdate strategy (maxSurge, maxUnavailable
        0; ``poolbench.core.children.rollout_strategy``) turns into the surge pods beside the old ones."""
        self.views = []
        old = planned.rollout_from
        if old is not None and planned.replicas > old:
            self.kube.roll_workload(self.workload_names, f"{planned.position}-{secrets.token_hex(4)}")
            return
        self.kube.scale_workload(self.workload_names, planned.replicas)

    def observe(self, expected: int) -> ReplicaProgress:
        pods = self.kube.workload_pods(self.name, self.variant)
        self.images.update(running_images(pods))
        # Each pod's metrics are one request through the API server's proxy: read side by side, so one
        # look at many replicas takes about as long as a look at one.
        if len(pods) < 2:
            self.views = [self.kube.pod_view(p) for p in pods]
        else:
            with ThreadPoolExecutor(max_workers=min(SCRAPERS, len(pods))) as scrape:
                self.views = list(scrape.map(self.kube.pod_view, pods))
        return ReplicaProgress(
            running=len(self.views),
            work_done=podstate.work_done(self.views, expected),
            finished=podstate.step_done(self.views, expected),
        )

    def replica_names(self) -> list[str]:
        return [p.metadata.name for p in self.kube.workload_pods(self.name, self.variant)]  # POOLBENCH_APP_NAME

    def collect(self) -> list[ReplicaReport]:
        return podstate.reports(self.views)  # what the last look saw; the pods go with the scale-down

    def scale_to_zero(self) -> None:
        """Returns once no replica can connect any more, as a watch shows it: every pod gone, or deleted
        with its containers terminated or its replica done at the last look (engine disposed of, not
        restarted since). The kubelet's teardown of the rest (sandbox, volumes, the pod object) holds
        no connection, so the next step does not wait for it; the step loop still waits for the
        server to show no client backend."""
        finished = podstate.finished_replicas(self.views)
        # Before the first variant (a resumed run's clean slate) any variant's workload may be up.
        targets = (
            [self.workload_names]
            if self.variant is not None
            else [Names(self.name, v) for v in variant_names(self.spec)]
        )
        for names in targets:
            self.kube.scale_workload(names, 0)
        deadline = time.monotonic() + SCALE_DOWN_TIMEOUT
        while (
            not self.kube.workload_stopped(self.name, SCALE_DOWN_WATCH_SECONDS, finished)
            and time.monotonic() < deadline
        ):
            self.wait(0.05)  # a stop ends the wait here; a dropped watch is not retried in a tight loop

    def recover_database(self) -> bool:
        return False  # the StatefulSet recreates the pod; the probe notices the new server

    def database_restarted(self) -> None:
        try:
            self.ensure_app_role()
        except psycopg2.Error as err:
            self.logger.warning("could not recreate the app role yet: %s", err)

    def record_images(self, finished: StepFinished) -> None:
        """The digests of the images that ran the step: the workload's (seen while it ran), PostgreSQL's
        and the variant's PgBouncer's (running now)."""
        servers = self.kube.component_pods(self.name, "postgres")
        if finished.planned.pooler is not None and self.variant is not None:
            servers += self.kube.component_pods(self.name, "pgbouncer", self.variant)
        self.images.update(running_images(servers))
        finished.step.images = dict(sorted(self.images.items()))
        self.images = {}

    def notify(self, event: LoopEvent) -> None:
        if isinstance(event, Progress):
            self.patch()
        elif isinstance(event, StepStarted):
            self.patch(force=True)
            self.event("Normal", "StepStarted", event.message)
        elif isinstance(event, StepFinished):
            self.record_images(event)
            self.patch(force=True)
            self.event(
                "Normal" if event.step.outcome == "Passed" else "Warning", f"Step{event.step.outcome}", event.message
            )
        elif isinstance(event, DatabaseRestarted):
            self.event("Warning", "DatabaseRestarted", event.message)
        elif isinstance(event, BenchmarkFinished):
            self.patch(force=True)
            self.event(
                "Normal" if event.status.phase in ("Completed", "BoundaryFound") else "Warning",
                "Finished",
                event.message,
            )
