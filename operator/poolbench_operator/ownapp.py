"""One PoolBenchmark of the user's own Deployment against the user's own PostgreSQL (spec.target +
spec.database): the Kubernetes and database side of ``poolbench.core.ownapp``.

Nothing is created but the optional load Job: no StatefulSet, no built-in workload. The monitor logs in
with the Secret the spec names (read by reference, never copied, never written anywhere: errors are
scrubbed of the password before they reach status, events or logs), checks its role can see other
sessions, and reads the server's limits live. Step mode changes the Deployment's replica count only
through its scale subresource, only with the allow-scaling annotation and no HPA, and puts the
original count back on every way out: the end, a failure, a stop (deletion, operator exit), and a
restarted operator that finds a run it did not finish.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from kubernetes.client.exceptions import ApiException

from poolbench.clock import seconds_since, utc_now
from poolbench.core.benchmark import set_conditions, status_from_resource
from poolbench.core.children import build_load_job, label_selector, load_job_name
from poolbench.core.ownapp import (
    Look,
    OwnAppRun,
    PodSeen,
    answer_and_finish,
    mark_restored,
    observe,
    step_through,
)
from poolbench.core.results import BenchmarkStatus, DatabaseStatus, TargetStatus
from poolbench.core.spec import ALLOW_SCALING_ANNOTATION, DEFAULT_MAX_SURGE, GITOPS_LABELS, PoolBenchmarkSpec
from poolbench.core.steploop import Stopped
from poolbench.db.live import (
    MonitorRoleError,
    ServerFacts,
    check_monitor_role,
    open_watch,
    read_backends,
    read_server_facts,
    scrub,
)

from .config import Config
from .kube import Kube
from .metricstate import MetricState, from_own_app

PATCH_INTERVAL = 1.2  # seconds between two routine status writes of one resource (as the built-in driver)
CONNECT_ATTEMPTS = 3
EventPoster = Callable[[str, str, str], None]  # (type, reason, message)
Logger = logging.Logger | logging.LoggerAdapter[Any]


class Refused(Exception):
    """The benchmark may not run as written (annotation, HPA, monitor role, Secret): one line for the user."""


class OwnAppDriver:
    """Runs one own-app PoolBenchmark to a terminal phase; implements ``poolbench.core.ownapp.Platform``."""

    def __init__(
        self,
        *,
        kube: Kube,
        body: dict[str, Any],
        spec: PoolBenchmarkSpec,
        stopped: Any,
        adopt: Callable[[dict[str, Any]], None],
        event: EventPoster,
        logger: Logger,
        config: Config,
        metrics: MetricState | None = None,
    ):
        assert spec.target is not None
        assert spec.database is not None
        self.kube = kube
        self.name: str = body["metadata"]["name"]
        self.spec = spec
        self.target = spec.target
        self.database = spec.database
        self.stopped = stopped
        self.adopt = adopt
        self.post_event = event
        self.logger = logger
        self.config = config
        self.metrics = metrics
        self.previous = status_from_resource(body.get("status"))
        status = BenchmarkStatus(phase="Pending", observed_generation=body["metadata"].get("generation"))
        status.target = TargetStatus(deployment=self.target.deployment, mode=self.target.mode)
        self.status = status
        self.run: OwnAppRun | None = None
        self.password: str | None = None
        self.monitor_role = ""
        self.conn: psycopg2.extensions.connection | None = None
        self.last_patch = 0.0
        #: The status as last written, so that a field left out since is nulled in the next merge patch.
        self.written: dict[str, Any] | None = body.get("status")
        self.cluster_read_at = -1e9
        self.cluster_seen: tuple[int | None, list[PodSeen]] = (None, [])
        self.selector = ""
        self.foreign: set[str] = set()  # client addresses that were no pod's when first seen

    # -- the run --------------------------------------------------------------------------------
    def execute(self) -> None:
        """To a terminal phase; a stop (deletion, operator exit) puts the replicas back and re-raises."""
        try:
            if self.previous is not None and self.previous.phase not in ("Pending", ""):
                self.resume_after_restart()
                return
            self.measure()
        except Stopped:
            self.restore_quietly()
            raise
        except Refused as err:
            self.restore_quietly()
            self.fail(str(err), reason="Refused")
        except Exception as err:  # noqa: BLE001 - the environment broke: a visible Failed, never a hang
            text = self.scrubbed(f"{type(err).__name__}: {err}")
            self.logger.error("benchmark failed: %s", text)
            self.restore_quietly()
            self.fail(text)
        finally:
            self.close()

    def resume_after_restart(self) -> None:
        """An operator that started again mid-run: a Step run's replicas go back first, then it says so.
        What was measured before stays in status; the run does not go on (its hold was cut)."""
        previous = self.previous
        assert previous is not None
        self.status = previous
        if self.status.target is None:
            self.status.target = TargetStatus(deployment=self.target.deployment, mode=self.target.mode)
        target = self.status.target
        if self.target.mode == "Observe":
            self.status = BenchmarkStatus(phase="Pending", observed_generation=previous.observed_generation)
            self.status.target = TargetStatus(deployment=self.target.deployment, mode="Observe")
            elapsed = seconds_since(target.observe_started_at)
            if elapsed is None:  # the watch had not begun
                self.event("Normal", "Restarted", "the operator restarted: observing from the start")
                self.measure()
                return
            self.event(
                "Normal",
                "Restarted",
                f"the operator restarted {elapsed:.0f}s into the watch: observing on to its end, what was read"
                " before kept",
            )
            self.measure(resume=(target, elapsed))
            return
        step = f" during step {self.status.current_step}" if self.status.current_step else ""
        if self.target.load is not None:  # a hold cut short leaves its Job: it goes now, not at its deadline
            for index in range(1, len(self.spec.step_counts()) + 1):
                self.kube.delete_job(load_job_name(self.name, index))
        if target.original_replicas is not None:
            self.restore()
            restored = target.restore_message or ""
        else:
            restored = "nothing had been scaled"
        self.fail(f"the operator restarted{step}: {restored}; steps finished before it are kept", reason="Restarted")

    def measure(self, resume: tuple[TargetStatus, float] | None = None) -> None:
        """The run, from its start; ``resume``: an Observe watch's status before an operator restart and
        the seconds since it began, to go on with."""
        self.check_deployment()
        facts = self.connect_monitor()
        usable = facts.usable_for_normal_role()
        self.status.max_connections = facts.max_connections
        self.status.phase = "Running"
        self.status.message = (
            f"observing {self.target.deployment} for {self.target.duration_seconds}s"
            if self.target.mode == "Observe"
            else f"stepping {self.target.deployment} through {self.spec.step_counts()}"
        )
        warnings = self.status.target.warnings if self.status.target else []
        if warnings:
            self.status.message += f" ({'; '.join(warnings)})"
        self.run = OwnAppRun(self.spec, self.status, usable, utc_now)
        interval = self.spec.sampling.interval_ms / 1000
        if self.target.mode == "Observe":
            if resume is not None:
                self.run.resume(*resume)
            observe(self.run, self, interval, elapsed=resume[1] if resume is not None else 0.0)
        else:
            step_through(self.run, self, interval)
        target = self.run.target
        replicas = target.original_replicas if target.original_replicas is not None else self.status.replicas
        message = answer_and_finish(self.run, target.max_surge, target.hpa_max_replicas, replicas)
        self.write(force=True)
        self.event("Normal", "Finished", message)

    def check_deployment(self) -> Any:
        """The Deployment exists; Step: it allows scaling and no HPA drives it (Observe records the HPA)."""
        name = self.target.deployment
        try:
            deployment = self.kube.deployment(name)
        except ApiException as err:
            if err.status == 404:
                raise Refused(f"spec.target.deployment: Deployment {self.kube.namespace}/{name} not found") from None
            raise
        target = self.status.target
        assert target is not None
        self.selector = label_selector(deployment.spec.selector.to_dict())
        target.max_surge = max_surge_of(deployment)
        hpas = self.kube.autoscalers_of(name)
        if hpas:
            target.hpa, target.hpa_max_replicas = hpas[0]
        if self.target.mode == "Step":
            annotations = deployment.metadata.annotations or {}
            if annotations.get(ALLOW_SCALING_ANNOTATION) != "true":
                raise Refused(
                    f'Deployment {name} is not annotated {ALLOW_SCALING_ANNOTATION}: "true", so poolbench may not'
                    f" scale it; to allow it: kubectl -n {self.kube.namespace} annotate deployment {name}"
                    f" {ALLOW_SCALING_ANNOTATION}=true"
                )
            if hpas:
                raise Refused(
                    f"HorizontalPodAutoscaler {hpas[0][0]} targets Deployment {name}: it would fight the steps"
                    " (mode Observe works with an HPA)"
                )
            labels = deployment.metadata.labels or {}
            owners = [f"{k}={labels[k]}" for k in GITOPS_LABELS if k in labels]
            if owners:
                warning = (
                    f"Deployment {name} carries {', '.join(owners)}: a GitOps tool may put its replica count back"
                    " during the steps"
                )
                target.warnings.append(warning)
                self.status.message = warning
                self.event("Warning", "GitOpsOwner", warning)
        return deployment

    # -- the monitor ----------------------------------------------------------------------------
    def connect_monitor(self) -> ServerFacts:
        """The monitor's login from the Secret, its session, its role checked, the server's limits read."""
        ref = self.database.monitor_secret
        where = f"Secret {self.kube.namespace}/{ref.name}"
        try:
            username, password = self.kube.secret_values(ref.name, ref.username_key, ref.password_key)
        except ApiException as err:
            if err.status == 404:
                raise Refused(f"spec.database.monitorSecret: {where} not found") from None
            if err.status == 403:
                raise Refused(
                    f"spec.database.monitorSecret: the operator may not read {where}; the chart lets it read"
                    " Secrets named in its value monitorSecretNames (default pb-monitor)"
                ) from None
            raise
        for key, value in ((ref.username_key, username), (ref.password_key, password)):
            if not value:
                raise Refused(f"spec.database.monitorSecret: {where} has no key {key!r}")
        assert username is not None
        assert password is not None
        self.password = password
        self.monitor_role = username
        conn = self.open_session()
        try:
            check_monitor_role(conn)
        except MonitorRoleError as err:
            raise Refused(f"spec.database: {err}") from None
        facts = read_server_facts(conn)
        self.status.database = DatabaseStatus(
            host=self.database.host,
            port=self.database.port,
            dbname=self.database.dbname,
            monitor_role=username,
            server_version_num=facts.server_version_num,
            max_connections=facts.max_connections,
            superuser_reserved_connections=facts.superuser_reserved_connections,
            reserved_connections=facts.reserved_connections,
            usable_for_normal_role=facts.usable_for_normal_role(),
        )
        return facts

    def open_session(self, attempts: int = CONNECT_ATTEMPTS) -> psycopg2.extensions.connection:
        """The monitor's session (a DSN without the password; the password travels apart and every error
        comes back scrubbed of it). At the start a few attempts (a server that is starting answers a
        moment later); mid-run one per look, so a server that is gone costs a gap, not a stall."""
        dsn = psycopg2.extensions.make_dsn(
            host=self.database.host,
            port=self.database.port,
            dbname=self.database.dbname,
            user=self.monitor_role,
            sslmode=self.database.sslmode,
        )
        for attempt in range(attempts):
            try:
                self.conn = open_watch(dsn, self.password)
                return self.conn
            except psycopg2.Error as err:
                if attempt == attempts - 1:
                    raise Refused(
                        f"spec.database: cannot connect to {self.database.host}:{self.database.port}"
                        f" as {self.monitor_role}: {self.scrubbed(str(err))}"
                    ) from None
            self.wait(2.0)
        raise AssertionError("unreachable")

    def scrubbed(self, text: str) -> str:
        return " ".join(scrub(text, self.password).split())

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
            self.conn = None

    # -- the core's Platform --------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float) -> None:
        if self.stopped.wait(seconds):
            raise Stopped()

    def look(self) -> Look:
        replicas, pods = self.cluster()
        try:
            if self.conn is None or self.conn.closed:
                self.open_session(attempts=1)
            assert self.conn is not None
            backends = read_backends(self.conn)
        except (psycopg2.Error, Refused) as err:
            self.close()
            return Look(replicas, pods, None, self.scrubbed(str(err)))
        # A new pod connects as soon as it has its IP, maybe before the pod list read last showed it: an
        # address not seen before is looked up among the pods again at once, so its backends are not
        # counted as another tenant's. Other tenants' addresses, once known, cost no further read.
        known = {p.ip for p in pods if p.ip}
        new = {b.client_addr for b in backends if b.client_addr and b.client_addr not in known} - self.foreign
        if new:
            self.cluster_read_at = -1e9
            replicas, pods = self.cluster()
            self.foreign |= new - {p.ip for p in pods if p.ip}
        return Look(replicas, pods, backends)

    def cluster(self) -> tuple[int | None, list[PodSeen]]:
        """The Deployment's replica count and its pods, read at most every poll interval (the server is
        read every sampling interval; the API server need not be)."""
        if time.monotonic() - self.cluster_read_at < self.config.poll_seconds:
            return self.cluster_seen
        replicas: int | None
        try:
            replicas = self.kube.deployment_replicas(self.target.deployment)
        except ApiException as err:
            if err.status != 404:
                raise
            replicas = None
        pods = [pod_seen(p) for p in self.kube.pods_matching(self.selector)] if self.selector else []
        self.cluster_seen = (replicas, pods)
        self.cluster_read_at = time.monotonic()
        return self.cluster_seen

    def scale(self, replicas: int) -> None:
        self.kube.scale_deployment(self.target.deployment, replicas)
        self.cluster_read_at = -1e9  # the next look reads the new count

    def start_load(self, step: int) -> str | None:
        load = self.target.load
        if load is None:
            return None
        job = build_load_job(self.name, step, load, self.target.hold_seconds)
        self.adopt(job)
        self.kube.create_job(job)
        self.event("Normal", "LoadStarted", f"step {step}: load Job {job['metadata']['name']} created")
        return str(job["metadata"]["name"])

    def stop_load(self, step: int) -> None:
        if self.target.load is not None:
            self.kube.delete_job(load_job_name(self.name, step))

    def restore(self) -> None:
        target = self.status.target
        if target is None or target.original_replicas is None or self.target.mode != "Step":
            return
        was_restored = target.restored
        self.kube.scale_deployment(self.target.deployment, target.original_replicas)
        seen = self.kube.deployment_replicas(self.target.deployment)
        message = mark_restored(target, seen)
        self.status.replicas = seen
        self.write(force=True)
        if not was_restored or not target.restored:
            self.event("Normal" if target.restored else "Warning", "Restored", message)

    def restore_quietly(self) -> None:
        """Put the replicas back on a way out; a failure to do so is said, not raised over the first error."""
        try:
            self.restore()
        except Exception as err:  # noqa: BLE001
            text = self.scrubbed(f"{type(err).__name__}: {err}")
            self.logger.error("could not restore the replica count: %s", text)
            self.event("Warning", "RestoreFailed", f"could not restore the replica count: {text}")

    def publish(self) -> None:
        """The metrics, from the status object being written (every look, throttled write or not)."""
        if self.metrics is None:
            return
        run = self.run
        database = self.status.database
        usable = run.usable if run is not None else (database.usable_for_normal_role if database else 0)
        self.metrics.publish(
            self.kube.namespace,
            self.name,
            from_own_app(
                self.kube.namespace,
                self.name,
                self.status,
                usable=usable,
                live_by_state=run.live_by_state if run is not None else {},
                progress_at=time.time(),
            ),
        )

    def write(self, force: bool = False) -> None:
        self.publish()
        if not force and time.monotonic() - self.last_patch < PATCH_INTERVAL:
            return
        now = utc_now()
        self.status.updated_at = now
        set_conditions(self.status, now)
        self.kube.patch_status(self.name, self.status.merge_patch(self.written))
        self.written = self.status.summary_json()
        self.last_patch = time.monotonic()

    def event(self, kind: str, reason: str, message: str) -> None:
        self.post_event(kind, reason, self.scrubbed(message))

    def fail(self, message: str, reason: str = "Failed") -> None:
        message = self.scrubbed(message)
        self.status.phase = "Failed"
        self.status.message = message
        self.write(force=True)
        self.event("Warning", reason, message)


def max_surge_of(deployment: Any) -> int | str | None:
    """The Deployment's RollingUpdate maxSurge (its default when unset); None with Recreate (no surge)."""
    strategy = deployment.spec.strategy
    if strategy is not None and strategy.type == "Recreate":
        return None
    rolling = strategy.rolling_update if strategy is not None else None
    surge: int | str = rolling.max_surge if rolling is not None and rolling.max_surge is not None else DEFAULT_MAX_SURGE
    return surge


def pod_seen(pod: Any) -> PodSeen:
    """A pod as a look takes it: IP, Ready (never while it is being deleted: it no longer counts toward a
    step, but its backends are still the app's), container restarts and the last termination's reason
    and message."""
    status = pod.status
    restarts, reason, message = 0, None, None
    for cs in (status.container_statuses or []) if status else []:
        restarts += cs.restart_count or 0
        terminated = cs.last_state.terminated if cs.last_state else None
        if terminated is not None:
            reason = terminated.reason or reason
            message = terminated.message or message
    ready = (
        pod.metadata.deletion_timestamp is None
        and status is not None
        and any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    )
    return PodSeen(pod.metadata.name, status.pod_ip if status else None, ready, restarts, reason, message)


def restore_after_delete(kube: Kube, spec: dict[str, Any], status: dict[str, Any]) -> str:
    """A deleted Step benchmark's replica count put back from its status (``originalReplicas``) unless it
    already was; what was done, or "" when nothing was to be done."""
    target = spec.get("target") or {}
    seen = status.get("target") or {}
    original = seen.get("originalReplicas")
    if target.get("mode") != "Step" or original is None or seen.get("restored"):
        return ""
    try:
        kube.scale_deployment(target["deployment"], int(original))
        replicas = kube.deployment_replicas(target["deployment"])
    except ApiException as err:
        if err.status == 404:
            return f"Deployment {target['deployment']} is gone: nothing to restore"
        raise
    if replicas != original:
        raise RuntimeError(f"replicas set to {original} but read back as {replicas}")
    return f"replicas restored to {original} (read back from the Deployment)"
