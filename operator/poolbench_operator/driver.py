"""The per-benchmark loop in a cluster: provision, step through the replicas, record, clean up.

It feeds the same core as the local runner (poolbench.benchmark.BenchmarkRun); only the platform
differs: pods instead of processes, a StatefulSet instead of the embedded server. The status is the
whole state, written as it goes, so after an operator restart the loop resumes where status says
and never redoes a finished step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2 import sql

from poolbench.benchmark import BenchmarkRun, PlannedStep, utc_now
from poolbench.probe import Probe, SamplerThread
from poolbench.results import BenchmarkStatus
from poolbench.sampling import Sample
from poolbench.spec import PoolBenchmarkSpec
from poolbench.workload_env import APP_ROLE, SUPERUSER

from . import podstate
from .builders import POSTGRES_PORT, Names, build_children
from .credentials import derive_password
from .kube import Kube

TERMINAL = ("Completed", "Failed", "Invalid")
PATCH_INTERVAL = 1.2  # seconds between status patches of one resource: under one patch a second
POLL = 0.5
PROVISION_TIMEOUT = 300.0
SCALE_DOWN_TIMEOUT = 120.0
DRAIN_TIMEOUT = 15.0


class Stopped(Exception):
    """kopf asked the daemon to stop (resource deleted, operator exiting)."""


def postgres_host(kube: Kube, names: Names) -> tuple[str, int]:
    """Where the operator reaches Postgres. In the cluster, the Service's DNS name. Outside it,
    POOLBENCH_POSTGRES_ADDRESS: ``pod-ip`` (routable pod IPs) or ``HOST:PORT`` (a port-forward or
    kind NodePort)."""
    mode = os.environ.get("POOLBENCH_POSTGRES_ADDRESS", "service")
    if mode == "service":
        return f"{names.postgres}.{kube.namespace}.svc", POSTGRES_PORT
    if mode == "pod-ip":
        ip = kube.postgres_pod_ip(names)
        if not ip:
            raise RuntimeError(f"pod {names.postgres_pod} has no IP yet")
        return ip, POSTGRES_PORT
    host, _, port = mode.rpartition(":")
    return host, int(port)


def resume_status(status: dict | None) -> BenchmarkStatus | None:
    """What status says was done, to resume from (kopf's own bookkeeping keys are dropped)."""
    if not status or not status.get("phase"):
        return None
    known = {field.alias or name for name, field in BenchmarkStatus.model_fields.items()}
    return BenchmarkStatus.model_validate({k: v for k, v in status.items() if k in known})


class Driver:
    def __init__(self, *, kube: Kube, body: dict, spec: PoolBenchmarkSpec, stopped: Any,
                 adopt: Callable[[dict], None], event: Callable[[str, str, str], None],
                 logger: logging.Logger, workload_image: str, key: bytes):
        self.kube = kube
        self.name = body["metadata"]["name"]
        self.names = Names(self.name)
        self.spec = spec
        self.stopped = stopped
        self.adopt = adopt
        self.event = event
        self.logger = logger
        self.workload_image = workload_image
        uid = body["metadata"]["uid"]
        self.superuser_password = derive_password(key, uid, "superuser")
        self.app_password = derive_password(key, uid, "app")
        self.run = BenchmarkRun(spec, resume_status(body.get("status")))
        self.run.status.observed_generation = body["metadata"].get("generation")
        self.lock = threading.Lock()
        self.last_patch = 0.0
        self.last_sample: Sample | None = None
        self.probe: Probe | None = None

    # -- status ---------------------------------------------------------------------------------
    def patch(self, force: bool = False) -> None:
        """Write status. Routine progress is skipped inside the interval; a step boundary (force)
        waits for the interval instead, so patches never come closer than PATCH_INTERVAL."""
        elapsed = time.monotonic() - self.last_patch
        if elapsed < PATCH_INTERVAL:
            if not force:
                return
            self.stopped.wait(PATCH_INTERVAL - elapsed)
        with self.lock:
            self.run.status.updated_at = utc_now()
            status = self.run.status.to_json()
        self.kube.patch_status(self.name, status)
        self.last_patch = time.monotonic()

    def wait(self, seconds: float) -> None:
        if self.stopped.wait(seconds):
            raise Stopped()

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

    def provision(self) -> None:
        if self.run.status.phase in ("Pending", ""):
            self.run.provisioning("creating PostgreSQL and the workload")
            self.patch(force=True)
        children = build_children(
            self.name, self.spec, workload_image=self.workload_image,
            superuser_password=self.superuser_password, app_password=self.app_password,
        )
        for child in children:
            self.adopt(child)
            if self.kube.ensure(child):
                self.logger.info("created %s %s", child["kind"], child["metadata"]["name"])

    def wait_for_postgres(self) -> None:
        deadline = time.monotonic() + PROVISION_TIMEOUT
        while not self.kube.postgres_ready(self.names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL was not ready after {PROVISION_TIMEOUT:.0f}s")
            self.wait(POLL)

    def connect(self):
        """A superuser connection; the address is resolved each time (a restarted pod has a new IP)."""
        host, port = postgres_host(self.kube, self.names)
        return psycopg2.connect(host=host, port=port, user=SUPERUSER, password=self.superuser_password,
                                dbname="postgres", connect_timeout=5)

    def ensure_app_role(self) -> None:
        """The normal role for ``role: app``; again after a database restart (emptyDir: a new cluster)."""
        if self.spec.workload.role != "app":
            return
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER PASSWORD %s").format(sql.Identifier(APP_ROLE)),
                        (self.app_password,))
        conn.close()

    def _sink(self, sample: Sample) -> None:
        with self.lock:
            self.last_sample = sample
            self.run.add_sample(sample)

    def measure(self) -> None:
        self.ensure_app_role()
        probe = Probe(self.connect, f"{self.names.workload}-")
        probe.open()  # before any load, so it holds its slot
        self.probe = probe
        sampler = SamplerThread(probe, self.spec.sampling.interval_ms / 1000, self._sink, time.monotonic())
        sampler.start()
        try:
            self.scale_to_zero()  # a clean slate, also after an operator restart mid-step
            for planned in iter(self.run.next_step, None):
                self.run_step(planned)
            with self.lock:
                status = self.run.finish()
            self.patch(force=True)
            verdict = status.verdict
            self.event("Normal" if status.phase == "Completed" else "Warning", "Finished",
                       verdict.summary if verdict else status.message)
        finally:
            sampler.stop()
            probe.close()
        self.cleanup()

    def run_step(self, planned: PlannedStep) -> None:
        with self.lock:
            self.run.begin_step(planned)
        self.patch(force=True)
        self.event("Normal", "StepStarted", f"step {planned.index}/{len(self.run.plan)}: scaling the workload"
                   f" to {planned.replicas} replicas (predicted peak {planned.predicted_peak},"
                   f" usable {planned.usable})")
        self.kube.scale_workload(self.names, planned.replicas)
        deadline = time.monotonic() + self.spec.step_timeout_seconds
        marked = timed_out = False
        views: list[podstate.PodView] = []
        restarts_seen = self.probe.server_restarts
        while True:
            if self.probe.server_restarts != restarts_seen:
                restarts_seen = self.probe.server_restarts
                self.event("Warning", "DatabaseRestarted", f"step {planned.index}: PostgreSQL restarted")
                try:
                    self.ensure_app_role()
                except psycopg2.Error as err:
                    self.logger.warning("could not recreate the app role yet: %s", err)
            views = [self.kube.pod_view(p) for p in self.kube.workload_pods(self.name)]
            if not marked and podstate.work_done(views, planned.replicas):
                with self.lock:
                    self.run.mark_work_done()
                marked = True
            if podstate.step_done(views, planned.replicas):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            self.patch()
            self.wait(POLL)
        with self.lock:
            step = self.run.finish_step(podstate.reports(views), timed_out=timed_out)
        self.patch(force=True)
        self.event("Normal" if step.outcome == "Passed" else "Warning", f"Step{step.outcome}",
                   f"step {planned.index}: {planned.replicas} replicas {step.outcome}: {step.reason}")
        if self.run.next_step() is not None or self.spec.cleanup != "Keep":
            self.scale_to_zero()

    def scale_to_zero(self) -> None:
        self.kube.scale_workload(self.names, 0)
        deadline = time.monotonic() + SCALE_DOWN_TIMEOUT
        while self.kube.count_workload_pods(self.name) and time.monotonic() < deadline:
            self.wait(POLL)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            last = self.last_sample
            if last is not None and last.ok and last.total == 0:
                break
            self.wait(0.1)

    def cleanup(self) -> None:
        policy = self.spec.cleanup
        if policy == "Delete":
            self.kube.delete_children(self.names)
            self.event("Normal", "Cleanup", "children deleted (spec.cleanup: Delete); status kept")
        elif policy == "ScaleDown":
            self.event("Normal", "Cleanup", "workload scaled to 0; PostgreSQL kept for inspection")

    def fail(self, message: str) -> None:
        with self.lock:
            self.run.fail(message)
        self.patch(force=True)
        self.event("Warning", "Failed", message)
