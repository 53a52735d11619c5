"""The step loop, once, for every platform (pure: the platform does all I/O).

For each planned step: begin it, scale the workload to N replicas, observe until every replica has
finished (or the step times out), notice database restarts on the way, collect the replicas'
reports, judge the step, and drain to zero so the next step starts from a clean slate. Two parties
do the I/O: a ``Platform`` runs the replicas (the local runner: processes on an embedded PostgreSQL;
the operator's driver: pods on a StatefulSet) and a ``Monitor`` watches the database and the
variant's pooler (``poolbench.db.monitor``, the same on both platforms). ``tests/test_steploop.py``
drives this loop with a fake of each through every branch. The loop runs in one thread: reads reach
it through ``Monitor.samples()`` in the order they were taken, each stamped with its own time, so
nothing here needs a lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .benchmark import BenchmarkRun, PlannedStep, ReplicaReport
from .compat import ClientTarget, ProbeRequest, probe_request
from .results import BenchmarkStatus, Compatibility, RolloutOverlap, StepResult
from .sampling import Sample
from .timeline import WindowAccount
from .words import counted

#: PostgreSQL keeps the first NAMEDATALEN - 1 bytes of an application_name (the replicas' names are ASCII).
APP_NAME_MAX = 63


class Stopped(Exception):
    """The platform was asked to stop (the resource was deleted, the operator is exiting)."""


@dataclass(frozen=True)
class ReplicaProgress:
    """What the platform sees of the step's replicas right now."""

    running: int  # replicas alive (processes, or pods present)
    work_done: bool  # every replica finished its work (its pool holds the ghosts) or crashed
    finished: bool  # every replica finished its hold or crashed: the step is over


@dataclass(frozen=True)
class LoopTiming:
    poll_seconds: float  # between two looks at the replicas
    drain_seconds: float  # how long a step's backends may take to close after scale-down, before they are
    # terminated (and again, after terminating them, before the next step starts anyway)
    recovery_seconds: float = 10.0  # how long a restarted server may take to be seen by the monitor


# -- what the loop tells the platform (events for the operator, progress lines for the CLI) ----------


@dataclass(frozen=True)
class StepStarted:
    planned: PlannedStep
    total_steps: int

    @property
    def message(self) -> str:
        p = self.planned
        if p.rollout_from is not None:
            return (
                f"{p.label}/{self.total_steps}: a rolling update: {counted(p.rollout_from, 'replica')}, then"
                f" {counted(p.replicas - p.rollout_from, 'surge pod')} beside"
                f" {'it' if p.rollout_from == 1 else 'them'} (predicted peak {p.predicted_peak},"
                f" usable {p.usable})"
            )
        if p.pooler is not None:
            each = f" at each of {p.pooler.replicas} instances" if p.pooler.replicas > 1 else ""
            return (
                f"{p.label}/{self.total_steps}: scaling the workload to {counted(p.replicas, 'replica')} through"
                f" {p.pooler.label()} (predicted {p.predicted_client_peak} clients, {p.pooler.usable_clients()}"
                f" allowed{each}" + f": {p.pooled_outcome}; server peak ≤ {p.predicted_peak}, usable {p.usable})"
            )
        return (
            f"{p.label}/{self.total_steps}: scaling the workload to {counted(p.replicas, 'replica')}"
            f" (predicted peak {p.predicted_peak}, usable {p.usable})"
        )


@dataclass(frozen=True)
class StepFinished:
    planned: PlannedStep
    step: StepResult

    @property
    def message(self) -> str:
        return (
            f"{self.planned.label}: {counted(self.planned.replicas, 'replica')} {self.step.outcome}: {self.step.reason}"
        )


@dataclass(frozen=True)
class DatabaseRestarted:
    step_index: int  # 0: between steps

    @property
    def message(self) -> str:
        where = f"step {self.step_index}" if self.step_index else "between steps"
        return f"{where}: PostgreSQL restarted"


@dataclass(frozen=True)
class BenchmarkFinished:
    status: BenchmarkStatus

    @property
    def message(self) -> str:
        verdict = self.status.verdict
        if self.status.comparison:
            return self.status.comparison
        return verdict.summary if verdict else self.status.message


@dataclass(frozen=True)
class Progress:
    """One look at a running step (the CLI's progress line; the operator's routine status patch)."""

    step: int
    total_steps: int
    replicas: int
    elapsed: float
    step_elapsed: float
    live: int
    peak: int
    running: int
    phase: str
    variant: str = ""  # with spec.variants: the variant being measured


LoopEvent = StepStarted | StepFinished | DatabaseRestarted | BenchmarkFinished | Progress


#: Opens one pooler instance's admin console (a DB-API connection); only the monitor calls it.
PoolerConsole = Callable[[], Any]


class Monitor(Protocol):
    """The database as poolbench's own session sees it, and the variant's pooler through its admin
    consoles: read on the monitor's own schedule, acted on between two reads."""

    def samples(self) -> list[Sample]:
        """The reads since the last call, oldest first."""
        ...

    def watch_pooler(self, consoles: Sequence[PoolerConsole]) -> None:
        """Read these pooler instances at each tick from now on (none: no pooler); the previous
        ones are let go."""
        ...

    def drop_pooler_connections(self) -> None:
        """The pooler closes its server connections (no replica is left), so the next step starts
        with none, as it does without a pooler."""
        ...

    def connection_ages(self) -> list[float]:
        """Seconds since each workload backend started, read once when the work is done."""
        ...

    def terminate_backends(self) -> int:
        """End every client backend but the monitor's (``pg_terminate_backend``); how many it ended."""
        ...

    def probe_compatibility(self, target: ClientTarget, request: ProbeRequest) -> Compatibility:
        """Run the app's statements from several clients through the pooler at ``target`` so that they
        share server connections, and say what the server showed (``poolbench.core.compat``); the
        pooler's server connections are dropped afterwards, so the load starts from none."""
        ...

    def server_account(self, start: float, end: float, ghosts_at: float | None = None) -> WindowAccount | str:
        """The server's exact account (from its log) of ``[start, end]`` on the platform's clock, its
        ghosts counted at ``ghosts_at`` (the work's end); or why there is none (no log, it lagged…)."""
        ...


class Platform(Protocol):
    """Where the replicas run, the clock, and what the loop reports; the database is the monitor's."""

    #: Leave the last step's replicas running after the benchmark (the operator's ``cleanup: Keep``).
    keeps_last_step: bool

    def now(self) -> float:
        """Seconds since the benchmark started, on the clock that stamps the monitor's samples."""
        ...

    def wait(self, seconds: float) -> None:
        """Sleep; raise ``Stopped`` (or let an interrupt through) when the run must end."""
        ...

    def use_variant(self, planned: PlannedStep) -> Sequence[PoolerConsole]:
        """Before the first step of a variant (no replica running): connect the workload the
        variant's way (start its pooler, or none). Returns the pooler's admin consoles, one per
        instance, for the monitor to read (none: no pooler, or none it can reach)."""
        ...

    def probe_target(self, planned: PlannedStep) -> ClientTarget | None:
        """After ``use_variant``: how a client logs in through the variant's pooler (its first instance)
        for the compatibility probe; None when there is no pooler, or none the platform can reach."""
        ...

    def scale(self, planned: PlannedStep) -> None:
        """Run ``planned.replicas`` replicas of the workload for this step."""
        ...

    def observe(self, expected: int) -> ReplicaProgress:
        """Look at the step's replicas."""
        ...

    def replica_names(self) -> list[str]:
        """The application_name of each replica running now (a process's name, a pod's name)."""
        ...

    def collect(self) -> list[ReplicaReport]:
        """The end of the step: each replica's report (stopping replicas still running if it must)."""
        ...

    def scale_to_zero(self) -> None:
        """No replica left; returns when they are gone (or the platform gave up waiting)."""
        ...

    def recover_database(self) -> bool:
        """Bring back a server that died, if the platform must do it itself; True when it did."""
        ...

    def database_restarted(self) -> None:
        """The monitor saw a new server: redo what lived in the old one (the app role)."""
        ...

    def notify(self, event: LoopEvent) -> None:
        """Report progress and boundaries (status patches, events, progress lines)."""
        ...


class StepLoop:
    """Runs the benchmark's remaining steps on a platform; resume-safe (the status is the state)."""

    def __init__(self, run: BenchmarkRun, platform: Platform, monitor: Monitor, timing: LoopTiming):
        self.run = run
        self.platform = platform
        self.monitor = monitor
        self.timing = timing
        self.last_sample: Sample | None = None
        self.rollout_samples: list[Sample] | None = None  # a rolling update's reads, kept to judge its overlap

    def execute(self) -> BenchmarkStatus:
        """Every step not yet finished, then the verdict. A step left unfinished by an interrupted
        run is measured again from a clean slate."""
        self.clean_slate()
        planned = self.run.next_step()
        variant: int | None = None
        while planned is not None:
            if planned.variant_index != variant:
                variant = planned.variant_index
                self.monitor.watch_pooler(())  # before the previous variant's pooler goes
                self.monitor.watch_pooler(self.platform.use_variant(planned))
                self.probe_compatibility(planned)
            self.run_step(planned)
            planned = self.run.next_step()
            if planned is not None or not self.platform.keeps_last_step:
                self.run.record_leftovers(self.clean_slate())
        status = self.run.finish()
        self.platform.notify(BenchmarkFinished(status))
        return status

    def probe_compatibility(self, planned: PlannedStep) -> None:
        """A pooled variant's compatibility probe, before its first step (again on a resumed run: it is cheap)."""
        if planned.pooler is None:
            return
        target = self.platform.probe_target(planned)
        if target is None:
            return
        request = probe_request(self.run.variant_specs[planned.variant_index], planned.pooler)
        self.run.record_compatibility(planned.variant_index, self.monitor.probe_compatibility(target, request))

    def feed(self) -> None:
        """Hand the monitor's new samples to the run; a sample from a new server is a restart."""
        for sample in self.monitor.samples():
            self.run.add_sample(sample)
            self.last_sample = sample
            if self.rollout_samples is not None:
                self.rollout_samples.append(sample)
            if sample.server_restarted:
                self.platform.notify(DatabaseRestarted(self.run.step_index()))
                self.platform.database_restarted()

    def run_step(self, planned: PlannedStep) -> StepResult:
        platform = self.platform
        if platform.recover_database():  # between steps: recover before the next load
            self.await_restart_seen()
        self.feed()  # what was read before the step belongs to no step
        began = platform.now()  # before any replica starts: the server's account starts here
        self.run.begin_step(planned)
        platform.notify(StepStarted(planned, self.run.totals[planned.variant_index]))
        old_names: list[str] | None = None
        if planned.rollout_from is not None:
            self.rollout_samples = []
            old_names = self.start_old_replicas(planned)
        platform.scale(planned)
        started = platform.now()
        deadline = started + self.run.spec.step_timeout_seconds
        timed_out = False
        while True:
            if platform.recover_database():
                self.await_restart_seen()
            self.feed()
            progress = platform.observe(planned.replicas)
            now = platform.now()
            if progress.work_done and not self.run.work_is_done():
                self.run.mark_work_done(at=now)
                self.run.record_connection_ages(self.monitor.connection_ages())
            platform.notify(self.progress(planned, started, now, progress.running))
            if progress.finished:
                break
            if now > deadline:
                timed_out = True
                break
            platform.wait(self.timing.poll_seconds)
        reports = platform.collect()
        self.feed()  # the reads up to the end of the step count in its peaks
        server = self.monitor.server_account(began, platform.now(), self.run.work_done_at())
        overlap = None
        if old_names is not None and planned.replicas == planned.rollout_from:
            overlap = RolloutOverlap(
                achieved=True,
                measured_by="applicationName",
                detail="maxSurge adds no pod: a rolling update never runs more than the replicas",
            )
        elif old_names is not None:
            overlap = rollout_overlap(
                old_names, self.rollout_samples or [], reports, planned.pooler is not None, planned.usable
            )
            self.rollout_samples = None
        step = self.run.finish_step(reports, timed_out=timed_out, overlap=overlap, server=server)
        platform.notify(StepFinished(planned, step))
        return step

    def start_old_replicas(self, planned: PlannedStep) -> list[str]:
        """A rolling update: the old replicas first, until their connections are open (or their work is
        done, or a tenth of the step's time has passed), so the surge pods start while the old ones work,
        as in a rollout. Returns the old replicas' names, to tell their connections from the surge's."""
        old = planned.rollout_from or 0
        self.platform.scale(replace(planned, replicas=old))
        if planned.pooler is not None:  # the server sees the poolers' connections, at most their pools
            opened = min(old * (planned.predicted_client_peak // planned.replicas), planned.server_capacity)
        else:
            opened = old * (planned.predicted_peak // planned.replicas)
        until = self.platform.now() + self.run.spec.step_timeout_seconds / 10
        while self.platform.now() < until:
            self.feed()
            last = self.last_sample
            if last is not None and last.ok and last.total >= opened:
                break
            if self.platform.observe(old).work_done:  # waiting longer cannot bring the overlap back
                break
            self.platform.wait(self.timing.poll_seconds)
        return self.platform.replica_names()

    def await_restart_seen(self) -> None:
        """After the platform restarted the server, wait until the monitor has seen the new one, so
        the step records the restart."""
        seen = self.run.restarts_seen()
        until = self.platform.now() + self.timing.recovery_seconds
        while self.run.restarts_seen() <= seen and self.platform.now() < until:
            self.platform.wait(self.timing.poll_seconds)
            self.feed()

    def clean_slate(self) -> int:
        """Scale to zero and wait until the server has no client backend but the monitor, so nothing
        of one step carries over into the next. Backends that outlive the grace (a statement that
        never ends keeps running after its client was killed) are terminated; returns how many."""
        self.platform.scale_to_zero()
        self.monitor.drop_pooler_connections()
        if self.drained():
            return 0
        terminated = self.monitor.terminate_backends()
        self.drained()
        return terminated

    def drained(self) -> bool:
        """Wait (at most drain_seconds) for a read, taken from now on, that shows no client backend."""
        since = self.platform.now()
        until = since + self.timing.drain_seconds
        while True:
            self.feed()
            last = self.last_sample
            if last is not None and last.t >= since and last.ok and last.total == 0:
                return True
            if self.platform.now() >= until:
                return False
            self.platform.wait(min(self.timing.poll_seconds, 0.1))

    def progress(self, planned: PlannedStep, started: float, now: float, running: int) -> Progress:
        status = self.run.status
        step = self.run.step
        return Progress(
            planned.index,
            self.run.totals[planned.variant_index],
            planned.replicas,
            now,
            now - started,
            status.live_connections,
            step.peak_connections if step else 0,
            running,
            status.phase,
            planned.tag,
        )


def rollout_overlap(
    old_names: list[str], samples: list[Sample], reports: list[ReplicaReport], pooled: bool, usable: int
) -> RolloutOverlap:
    """Did the server hold the old replicas' connections and the surge pods' at once? Direct: from the
    server's backends per application_name, some read must show every connection the old replicas
    held in the step beside the surge pods' peak, or beside as many as the server still allowed (its
    ``usable`` slots full: the surge was refused because of the overlap). Pooled (the server's backends
    are the poolers'): from the replicas' own clocks, every old replica must still have been working
    when the last surge pod started its work."""
    old = {name[:APP_NAME_MAX] for name in old_names}
    if pooled:
        return overlap_by_work_times(old, reports)
    reads = [
        (held, sample.total - held)
        for sample in samples
        if sample.ok
        for held in [sum(count for app, count in sample.by_app.items() if app in old)]
    ]
    old_peak = max((held for held, _ in reads), default=0)
    surge_peak = max((surge for _, surge in reads), default=0)
    old_at_peak = max((held for held, surge in reads if surge == surge_peak and surge), default=0)
    beside = [surge for held, surge in reads if held >= old_peak and surge]  # beside all of the old ones'
    full = any(held + surge >= usable for held, surge in reads if held >= old_peak and surge)
    achieved = old_peak > 0 and surge_peak > 0 and (max(beside, default=0) >= surge_peak or full)
    if achieved and max(beside, default=0) >= surge_peak:
        detail = (
            f"at the surge pods' peak ({surge_peak} {connections(surge_peak)}) the old replicas still held"
            f" all {old_peak} of theirs"
        )
    elif achieved:
        detail = (
            f"the old replicas held all {old_peak} of their connections while the surge pods took the rest of"
            f" the {usable} usable"
        )
    elif old_peak == 0:
        detail = "the monitor saw no connection of the old replicas"
    elif surge_peak == 0:
        detail = "the monitor saw no connection of the surge pods"
    else:
        detail = (
            f"the old replicas held {old_at_peak} of their {old_peak} {connections(old_peak)} when the surge pods"
            f" peaked at {surge_peak}: they had finished their work or closed their pools before the new"
            " ones connected" + (f" (beside all of theirs the surge pods held at most {max(beside)})" if beside else "")
        )
    return RolloutOverlap(
        achieved=achieved,
        measured_by="applicationName",
        old_connections=old_peak,
        old_connections_at_surge_peak=old_at_peak,
        surge_peak_connections=surge_peak,
        detail=detail,
    )


def connections(count: int) -> str:
    return "connection" if count == 1 else "connections"


def overlap_by_work_times(old: set[str], reports: list[ReplicaReport]) -> RolloutOverlap:
    olds = [r for r in reports if r.name[:APP_NAME_MAX] in old]
    surge = [r for r in reports if r.name[:APP_NAME_MAX] not in old]
    ends = [r.work_ended_at for r in olds]
    starts = [r.work_started_at for r in surge]
    if not olds or not surge or None in ends or None in starts:
        return RolloutOverlap(
            achieved=False,
            measured_by="workTimes",
            detail="the replicas did not report when their work started and ended",
        )
    first_end = min(t for t in ends if t is not None)
    last_start = max(t for t in starts if t is not None)
    if first_end >= last_start:
        detail = "every old replica was still working when the last surge pod started its work"
        return RolloutOverlap(achieved=True, measured_by="workTimes", detail=detail)
    detail = (
        f"an old replica had finished its work {last_start - first_end:.1f} s before the last surge pod"
        " started its work"
    )
    return RolloutOverlap(achieved=False, measured_by="workTimes", detail=detail)


def run_steps(run: BenchmarkRun, platform: Platform, monitor: Monitor, timing: LoopTiming) -> BenchmarkStatus:
    """Run the benchmark's remaining steps on ``platform``, watched by ``monitor``; the finished status."""
    return StepLoop(run, platform, monitor, timing).execute()
