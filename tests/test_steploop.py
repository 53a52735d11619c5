"""The step loop through every branch, on a fake platform and a fake monitor with a fake clock
(milliseconds, no I/O).

The fake platform plays the replicas by a script: for each step, when the replicas finish their
work, when they finish their hold (or never), how many connections they hold meanwhile, and what
they report. The fake monitor reads the server they load on a 100 ms grid as the fake clock
advances, like the probe's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from poolbench.clock import utc_now
from poolbench.core.benchmark import BenchmarkRun, PlannedStep, ReplicaReport, status_from_resource
from poolbench.core.compat import ClientTarget, ProbeRequest
from poolbench.core.results import BenchmarkStatus, Compatibility, CompatibilityFinding, StepResult
from poolbench.core.sampling import PoolerRead, Sample
from poolbench.core.spec import PoolerSpec, parse_spec
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
    rollout_overlap,
    run_steps,
)
from poolbench.core.timeline import WindowAccount

TIMING = LoopTiming(poll_seconds=0.05, drain_seconds=2.0, recovery_seconds=1.0)
INTERVAL = 0.1


@dataclass
class Script:
    """How one step's replicas behave, in seconds after the scale-up."""

    work_done_at: float | None = 0.5  # None: never
    finished_at: float | None = 1.0  # None: never (the step times out)
    connections_per_replica: int = 3  # while working
    ghosts_per_replica: int = 2  # while holding
    crashed: bool = False
    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 10})
    server_dies_at: float | None = None  # the platform must restart it (local)
    server_restarts_at: float | None = None  # restarted behind the platform's back (StatefulSet)
    stuck: int = 0  # backends that outlive the replicas (a statement still running) until terminated


class FakeMonitor:
    """The server as the monitor reads it: the platform's replicas' connections (and backends that
    outlive them), read on a 100 ms grid as the platform's clock advances, like the probe's."""

    def __init__(self, platform: FakePlatform, leftover: int = 0):
        self.platform = platform
        self.next_sample = 0.0
        self.pending: list[Sample] = []
        self.leftover = leftover  # backends still open at the start (an interrupted earlier run)
        self.stuck = 0  # backends that outlived their replicas until terminated
        self.terminated = 0
        self.server_dead = False
        self.restart_pending = False
        self.pooled = False  # the variant's pooler is read: samples carry its reads
        self.log: list[str] = []  # what the loop asked of the pooler, in order
        self.findings: list[CompatibilityFinding] = []  # what the compatibility probe finds

    def _connections(self, t: float) -> int:
        platform = self.platform
        phase = platform._phase(t)
        if phase == "none":
            return self.leftover + self.stuck
        if phase == "gone" or platform.script is None:
            return 0
        s = platform.script
        return platform.replicas * (s.ghosts_per_replica if phase == "holding" else s.connections_per_replica)

    def read_until(self, until: float) -> None:
        """Take the reads due up to ``until``, each from the server as it is at its time."""
        platform = self.platform
        while self.next_sample <= until:
            t = self.next_sample
            s = platform.script
            if s is not None and platform.replicas:
                age = t - platform.scaled_at
                if s.server_dies_at is not None and age >= s.server_dies_at and not self.server_dead:
                    self.server_dead, s.server_dies_at = True, None
                if s.server_restarts_at is not None and age >= s.server_restarts_at:
                    self.restart_pending, s.server_restarts_at = True, None
            if self.server_dead:
                self.pending.append(Sample.gap(t, "server closed the connection unexpectedly"))
            else:
                total = self._connections(t)
                read = None
                if self.pooled and platform.pooler is not None:  # the app's connections are clients there;
                    # the server sees the pool
                    capacity = platform.pooler.replicas * platform.pooler.server_connections()
                    read = PoolerRead(clients=total, waiting=max(0, total - capacity), servers=min(total, capacity))
                    total = min(total, capacity)
                sample = Sample(t=t, total=total, by_state={"active": total}, by_app={"r": total}, pooler=read)
                if self.restart_pending:
                    sample, self.restart_pending = replace(sample, server_restarted=True), False
                self.pending.append(sample)
            self.next_sample = round(self.next_sample + INTERVAL, 6)

    # Monitor
    def samples(self) -> list[Sample]:
        out, self.pending = self.pending, []
        return out

    def watch_pooler(self, consoles: Sequence[PoolerConsole]) -> None:
        self.pooled = bool(consoles)
        self.log.append(f"watch {len(consoles)}")

    def drop_pooler_connections(self) -> None:
        self.log.append("drop")

    def probe_compatibility(self, target: ClientTarget, request: ProbeRequest) -> Compatibility:
        self.log.append(f"probe {target.host}:{target.port} {request.pool_mode} {' / '.join(request.on_connect)}")
        return Compatibility(pool_mode=request.pool_mode, findings=list(self.findings))

    def connection_ages(self) -> list[float]:
        self.platform.calls.append("ages")
        return [1.0 + i for i in range(self._connections(self.platform.t))]

    def server_account(self, start: float, end: float, ghosts_at: float | None = None) -> WindowAccount | str:
        return "the fake server keeps no log"

    def terminate_backends(self) -> int:
        self.platform.calls.append("terminate")
        ended, self.stuck = self.stuck + self.leftover, 0
        self.leftover = 0
        self.terminated += ended
        return ended


class FakePlatform:
    """The replicas, each step's by its script, on a fake clock; the server they load is its monitor's."""

    def __init__(
        self,
        scripts: list[Script],
        *,
        keeps_last_step: bool = False,
        stop_at: float | None = None,
        leftover: int = 0,
        look_seconds: float = 0.0,
    ):
        self.scripts = list(scripts)
        self.keeps_last_step = keeps_last_step
        self.stop_at = stop_at
        self.t = 0.0
        self.script: Script | None = None
        self.scaled_at = 0.0
        self.replicas = 0
        self.calls: list[str] = []  # what the loop asked of the platform and of the monitor, in order
        self.events: list[LoopEvent] = []
        self.restart_hooks = 0
        self.look_seconds = look_seconds  # a look at the replicas takes this long (listing pods)
        self.variants: list[str] = []  # use_variant calls, in order
        self.pooler: PoolerSpec | None = None  # the variant's pooler
        self.monitor = FakeMonitor(self, leftover)

    def _phase(self, t: float) -> str:
        """Where the step's replicas are at time t: none, working, holding or gone."""
        if self.script is None or not self.replicas:
            return "none"
        age = t - self.scaled_at
        s = self.script
        if s.finished_at is not None and age >= s.finished_at:
            return "gone"
        if s.work_done_at is not None and age >= s.work_done_at:
            return "holding"
        return "working"

    def _advance(self, until: float) -> None:
        self.monitor.read_until(until)
        self.t = until

    # Platform
    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        if self.stop_at is not None and self.t >= self.stop_at:
            raise Stopped()
        self._advance(self.t + seconds)

    def use_variant(self, planned: PlannedStep) -> Sequence[PoolerConsole]:
        self.variants.append(planned.variant)
        self.pooler = planned.pooler
        return [lambda: None] * (planned.pooler.replicas if planned.pooler is not None else 0)

    def probe_target(self, planned: PlannedStep) -> ClientTarget | None:
        return ClientTarget("127.0.0.1", 6432, "postgres", "postgres") if planned.pooler is not None else None

    def scale(self, planned: PlannedStep) -> None:
        self.calls.append(f"scale {planned.replicas}")
        self.script = self.scripts.pop(0)
        self.replicas, self.scaled_at = planned.replicas, self.t

    def observe(self, expected: int) -> ReplicaProgress:
        assert self.script is not None
        self._advance(self.t + self.look_seconds)
        age = self.t - self.scaled_at
        s = self.script
        work_done = s.work_done_at is not None and age >= s.work_done_at
        finished = s.finished_at is not None and age >= s.finished_at
        return ReplicaProgress(running=0 if finished else expected, work_done=work_done, finished=finished)

    def replica_names(self) -> list[str]:
        return ["r"] if self.replicas else []

    def collect(self) -> list[ReplicaReport]:
        assert self.script is not None
        self.calls.append("collect")
        s = self.script
        return [
            ReplicaReport(
                f"r{i}",
                outcomes=dict(s.outcomes),
                crashed=s.crashed,
                first_error="boom" if s.crashed else None,
                first_error_class="tooManyClients" if s.crashed else None,
            )
            for i in range(self.replicas)
        ]

    def scale_to_zero(self) -> None:
        self.calls.append("scale 0")
        if self.replicas and self.script is not None:
            self.monitor.stuck = self.script.stuck
        self.replicas = 0
        self.monitor.leftover = 0

    def recover_database(self) -> bool:
        if not self.monitor.server_dead:
            return False
        self.calls.append("recover")
        self.monitor.server_dead, self.monitor.restart_pending = False, True
        return True

    def database_restarted(self) -> None:
        self.restart_hooks += 1

    def notify(self, event: LoopEvent) -> None:
        self.events.append(event)


def run_on(run: BenchmarkRun, platform: FakePlatform) -> BenchmarkStatus:
    """The loop on a fake platform, watched by its fake monitor."""
    return run_steps(run, platform, platform.monitor, TIMING)


def spec(**overrides: object) -> BenchmarkRun:
    doc: dict[str, object] = {"steps": [2, 4], "stepTimeoutSeconds": 5, "workload": {"threads": 3, "holdSeconds": 1}}
    doc.update(overrides)
    return BenchmarkRun(parse_spec(doc), clock=utc_now)


def kinds(platform: FakePlatform, kind: type) -> list[LoopEvent]:
    return [e for e in platform.events if isinstance(e, kind)]


def test_every_step_passes_with_peaks_and_ghosts_from_the_samples() -> None:
    run = spec()
    platform = FakePlatform([Script(), Script()])
    status = run_on(run, platform)
    assert status.phase == "Completed"
    assert [s.outcome for s in status.variants[0].steps] == ["Passed", "Passed"]
    assert [s.peak_connections for s in status.variants[0].steps] == [6, 12]  # replicas × connections while working
    assert [s.idle_at_end for s in status.variants[0].steps] == [0, 0]  # by_state has only "active" here
    assert [s.queries for s in status.variants[0].steps] == [20, 40]
    assert platform.calls == [
        "scale 0",
        "scale 2",
        "ages",
        "collect",
        "scale 0",
        "scale 4",
        "ages",
        "collect",
        "scale 0",
    ]
    # Ages are read once, when the work is done: 2 replicas × 2 ghosts → [1, 2, 3, 4] s.
    assert status.variants[0].steps[0].connection_age_seconds.to_json() == {"p50": 2.0, "max": 4.0}
    assert status.verdict is not None
    assert status.verdict.max_safe_replicas == 4
    assert isinstance(platform.events[-1], BenchmarkFinished)
    # Without spec.variants: one direct variant, named nowhere (no comparison, plain step labels).
    assert [v.name for v in status.variants] == ["direct"]
    assert status.verdict == status.variants[0].verdict
    assert status.short_verdict == "safe 4, none failed"
    assert status.comparison == ""
    assert status.message == status.verdict.summary
    started = [e.message.split(":")[0] for e in platform.events if isinstance(e, StepStarted)]
    assert started == ["step 1/2", "step 2/2"]
    document = status.to_json()
    assert "steps" not in document
    assert "comparison" not in document
    assert "currentVariant" not in document
    assert BenchmarkStatus.model_validate(document) == status
    assert "pooler" not in document["variants"][0]["steps"][0]  # a direct step's null is not written
    assert [type(e) for e in platform.events if not isinstance(e, Progress)] == [
        StepStarted,
        StepFinished,
        StepStarted,
        StepFinished,
        BenchmarkFinished,
    ]


def test_ghosts_count_only_samples_read_after_the_work_was_done() -> None:
    class IdleMonitor(FakeMonitor):
        def read_until(self, until: float) -> None:
            super().read_until(until)
            # Idle connections: during the work 1 per replica, after it the ghosts.
            self.pending = [replace(s, by_state={"idle": self._idle(s.t)}) if s.ok else s for s in self.pending]

        def _idle(self, t: float) -> int:
            phase = self.platform._phase(t)
            if phase == "holding":
                return self._connections(t)
            # More idle during the work than after it: these must not count as ghosts.
            return self.platform.replicas * 5 if phase == "working" else 0

    run = spec(steps=[2])
    # A look at the replicas takes 0.3 s: samples read during the look that sees the work done
    # (some from before the work ended) reach the loop only after it marked the work done.
    platform = FakePlatform([Script(work_done_at=0.5, finished_at=2.0)], look_seconds=0.3)
    platform.monitor = IdleMonitor(platform)
    status = run_on(run, platform)
    assert status.variants[0].steps[0].idle_at_end == 4  # 2 replicas × 2 ghosts, not the 10 idle during the work


def test_a_step_that_never_finishes_times_out_and_fails() -> None:
    run = spec(steps=[2, 4])
    platform = FakePlatform([Script(finished_at=None)])
    status = run_on(run, platform)
    step = status.variants[0].steps[0]
    assert step.timed_out
    assert step.outcome == "Failed"
    assert "the step timed out" in (step.reason or "")
    assert platform.t >= 5.0  # stepTimeoutSeconds on the fake clock
    assert len(status.variants[0].steps) == 1
    assert status.phase == "Failed"
    assert "scale 4" not in platform.calls


def test_a_crashed_replica_fails_the_step_and_stops_the_run() -> None:
    run = spec()
    platform = FakePlatform([Script(crashed=True, outcomes={"ok": 3, "tooManyClients": 1})])
    status = run_on(run, platform)
    step = status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.crashed_replicas == 2
    assert step.errors.too_many_clients == 2
    assert step.first_error_class == "tooManyClients"
    assert len(status.variants[0].steps) == 1
    assert status.verdict is not None
    assert status.verdict.first_failing_replicas == 2
    assert status.verdict.max_safe_replicas is None


def test_without_stop_on_failure_every_step_runs() -> None:
    run = spec(stopOnFailure=False)
    platform = FakePlatform([Script(crashed=True), Script()])
    status = run_on(run, platform)
    assert [s.outcome for s in status.variants[0].steps] == ["Failed", "Passed"]
    assert status.phase == "Failed"


def test_a_server_the_platform_restarts_fails_the_step_and_the_next_step_runs() -> None:
    run = spec(stopOnFailure=False)
    platform = FakePlatform([Script(server_dies_at=0.3), Script()])
    status = run_on(run, platform)
    first, second = status.variants[0].steps
    assert "recover" in platform.calls
    assert first.outcome == "Failed"
    assert first.database_restarts == 1
    assert first.sample_gaps >= 1
    assert (first.reason or "").startswith("the database restarted during the step")
    assert second.outcome == "Passed"
    assert second.database_restarts == 0
    restarts = kinds(platform, DatabaseRestarted)
    assert len(restarts) == 1
    restart = restarts[0]
    assert isinstance(restart, DatabaseRestarted)
    assert restart.step_index == 1
    assert platform.restart_hooks == 1


def test_a_server_restarted_behind_the_platform_is_noticed_from_the_samples() -> None:
    run = spec(steps=[2])
    platform = FakePlatform([Script(server_restarts_at=0.2)])
    status = run_on(run, platform)
    assert "recover" not in platform.calls
    assert status.variants[0].steps[0].database_restarts == 1
    assert status.variants[0].steps[0].outcome == "Failed"
    assert platform.restart_hooks == 1
    assert len(kinds(platform, DatabaseRestarted)) == 1


def test_resume_runs_only_what_status_does_not_show_as_finished() -> None:
    first = spec()
    run_on(first, FakePlatform([Script(), Script()]))
    saved = first.status.to_json()
    (direct,) = saved["variants"]
    finished_step = direct["steps"][0]
    # An operator restart mid step 2: status shows step 1 finished and step 2 half measured.
    half = {
        **direct,
        "verdict": None,
        "steps": [finished_step, {**direct["steps"][1], "outcome": None, "finishedAt": None}],
    }
    interrupted = {**saved, "phase": "Running", "verdict": None, "variants": [half]}
    resumed_status = status_from_resource(interrupted)
    assert resumed_status is not None
    run = BenchmarkRun(first.spec, resumed_status, clock=utc_now)
    platform = FakePlatform([Script()], leftover=7)
    status = run_on(run, platform)
    assert platform.calls[:2] == ["scale 0", "scale 4"]  # clean slate first, then only step 2
    assert [s.replicas for s in status.variants[0].steps] == [2, 4]
    assert status.variants[0].steps[0] == StepResult.model_validate(finished_step)  # never redone, never changed
    assert status.variants[0].steps[1].outcome == "Passed"
    assert status.variants[0].steps[1].peak_connections == 12
    assert status.phase == "Completed"


def test_a_finished_benchmark_runs_no_step() -> None:
    first = spec()
    run_on(first, FakePlatform([Script(), Script()]))
    again = BenchmarkRun(first.spec, status_from_resource(first.status.to_json()), clock=utc_now)
    platform = FakePlatform([])
    run_on(again, platform)
    assert not any(c.startswith("scale ") and c != "scale 0" for c in platform.calls)


def test_keep_leaves_the_last_step_running() -> None:
    run = spec()
    platform = FakePlatform([Script(), Script()], keeps_last_step=True)
    run_on(run, platform)
    assert platform.calls == ["scale 0", "scale 2", "ages", "collect", "scale 0", "scale 4", "ages", "collect"]


def test_the_drain_waits_for_the_server_to_close_every_backend() -> None:
    run = spec(steps=[2])
    platform = FakePlatform([Script()], leftover=5)
    monitor = platform.monitor

    def scale_to_zero() -> None:  # backends linger 0.35 s after the replicas are gone
        platform.calls.append("scale 0")
        platform.replicas = monitor.leftover = 0
        gone_at = platform.t + 0.35
        original = monitor._connections
        monitor._connections = lambda t: original(t) if t >= gone_at else 5  # type: ignore[method-assign]

    platform.scale_to_zero = scale_to_zero  # type: ignore[method-assign]
    run_on(run, platform)
    started = kinds(platform, StepStarted)[0]
    assert started is not None
    # The step started as soon as a sample showed 0 backends, not before, and not much later.
    assert 0.35 <= platform.scaled_at <= 0.35 + INTERVAL + TIMING.poll_seconds


def test_the_drain_gives_up_after_its_time() -> None:
    run = spec(steps=[2])
    platform = FakePlatform([Script()], leftover=5)
    platform.scale_to_zero = lambda: platform.calls.append("scale 0")  # type: ignore[method-assign]
    run_on(run, platform)
    assert platform.scaled_at == pytest.approx(TIMING.drain_seconds, abs=0.11)


def test_stopped_ends_the_loop_and_keeps_what_was_measured() -> None:
    run = spec()
    platform = FakePlatform([Script(), Script(finished_at=None)], stop_at=2.0)
    with pytest.raises(Stopped):
        run_on(run, platform)
    assert run.status.variants[0].steps[0].outcome == "Passed"
    assert run.status.variants[0].steps[1].outcome is None  # unfinished: measured again on resume
    assert run.status.phase == "Running"


def test_progress_reports_live_and_peak_connections() -> None:
    run = spec(steps=[2])
    platform = FakePlatform([Script()])
    run_on(run, platform)
    progress = [e for e in platform.events if isinstance(e, Progress)]
    assert progress
    assert max(p.peak for p in progress) == 6
    assert all(p.step == 1 and p.total_steps == 1 and p.replicas == 2 for p in progress)
    assert progress[-1].running == 0


def test_event_messages_say_what_happened() -> None:
    run = spec(steps=[2])
    platform = FakePlatform([Script(server_restarts_at=0.2)])
    run_on(run, platform)
    messages = [e.message for e in platform.events if not isinstance(e, Progress)]
    assert messages[0] == "step 1/1: scaling the workload to 2 replicas (predicted peak 6, usable 99)"
    assert messages[1] == "step 1: PostgreSQL restarted"
    assert messages[2].startswith("step 1: 2 replicas Failed: the database restarted during the step (1x)")


def test_backends_that_outlive_a_timed_out_step_are_terminated_and_reported() -> None:
    run = spec(stopOnFailure=False)
    platform = FakePlatform([Script(finished_at=None, stuck=4), Script()])
    status = run_on(run, platform)
    first, second = status.variants[0].steps
    assert first.timed_out
    assert first.leftover_backends == 4
    assert platform.calls.count("terminate") == 1
    assert platform.monitor.terminated == 4
    # The next step starts only after they are gone: its peak is its own (4 replicas × 3), not + 4.
    assert second.peak_connections == 12
    assert second.outcome == "Passed"
    assert second.leftover_backends == 0


def test_a_clean_step_terminates_nothing() -> None:
    platform = FakePlatform([Script(), Script()])
    run_on(spec(), platform)
    assert "terminate" not in platform.calls


def test_a_step_whose_reads_mostly_failed_is_inconclusive_and_ends_the_run() -> None:
    class BlindMonitor(FakeMonitor):
        def samples(self) -> list[Sample]:
            taken = super().samples()
            if self.platform.replicas:  # the monitor is killed between reads during the step
                return [Sample.gap(s.t, "terminating connection due to idle-session timeout") for s in taken]
            return taken

    run = spec()
    platform = FakePlatform([Script(), Script()])
    platform.monitor = BlindMonitor(platform)
    status = run_on(run, platform)
    step = status.variants[0].steps[0]
    assert step.outcome == "Inconclusive"
    assert step.samples == 0
    assert step.sample_gaps > 0
    assert "the monitor lost" in (step.reason or "")
    assert "idle-session timeout" in (step.reason or "")
    assert len(status.variants[0].steps) == 1
    assert status.phase == "Failed"
    assert status.verdict is not None
    assert status.verdict.max_safe_replicas is None
    assert status.verdict.first_failing_replicas is None
    assert "2 replicas were inconclusive" in status.verdict.summary


# -- variants: each runs the whole plan in turn ---------------------------------------------------------

VARIANTS = [
    {"name": "direct"},
    {"name": "tx", "pooler": {"poolMode": "transaction", "defaultPoolSize": 5}, "engine": {"poolClass": "NullPool"}},
]


def test_variants_run_in_turn_each_through_every_step() -> None:
    run = spec(variants=VARIANTS)
    platform = FakePlatform([Script(), Script(), Script(), Script()])
    status = run_on(run, platform)
    assert platform.variants == ["direct", "tx"]  # use_variant once per variant, in order
    assert [v.name for v in status.variants] == ["direct", "tx"]
    direct, tx = status.variants
    assert [s.peak_connections for s in direct.steps] == [6, 12]
    # Behind the pooler the server sees at most the pool (5); the app's 6 and 12 are clients there.
    assert [s.peak_connections for s in tx.steps] == [5, 5]
    pooled = [s.pooler for s in tx.steps if s.pooler is not None]
    assert len(pooled) == 2
    assert not any(s.pooler for s in direct.steps)
    assert [p.client_peak_connections for p in pooled] == [6, 12]
    assert [p.waiting_peak for p in pooled] == [1, 7]
    assert [s.predicted_peak for s in tx.steps] == [5, 5]  # min(replicas × 3 threads, pool 5)
    assert [p.predicted_client_peak for p in pooled] == [6, 12]
    assert status.verdict == direct.verdict  # the first variant's
    assert "steps" not in status.to_json()  # each variant's steps are in its own entry, once
    assert tx.verdict is not None
    assert tx.verdict.max_safe_replicas == 4
    assert tx.engine.pool_class == "NullPool"
    assert tx.pooler is not None
    assert status.total_steps == 4
    assert status.progress == "4/4"
    assert status.comparison.startswith("Scales furthest: direct, tx (4 replicas).")
    started = [e.message for e in platform.events if isinstance(e, StepStarted)]
    assert started[0].startswith("direct step 1/2: scaling the workload to 2 replicas")
    assert started[2].startswith("tx step 1/2: scaling the workload to 2 replicas through PgBouncer transaction")


def test_the_monitor_reads_each_variants_pooler_which_drops_its_server_connections_at_each_clean_slate() -> None:
    platform = FakePlatform([Script() for _ in range(4)])
    run_on(spec(variants=VARIANTS), platform)
    # The previous variant's pooler is let go before the next variant starts its own; the direct
    # variant has none, the tx variant's one instance is read. Every clean slate drops the servers.
    assert platform.monitor.log == [
        "drop",
        "watch 0",
        "watch 0",
        "drop",
        "drop",
        "watch 0",
        "watch 1",
        "probe 127.0.0.1:6432 transaction ",
        "drop",
        "drop",
    ]


def test_each_pooled_variant_is_probed_for_compatibility_before_its_load() -> None:
    # The probe runs once per pooled variant, after its pooler is up and before its first step, with the
    # app's statements; its findings go to the variant's status. A direct variant is not probed.
    leak = CompatibilityFinding(kind="sessionSettingLeaked", evidence="client B saw it", fix="SET LOCAL")
    platform = FakePlatform([Script() for _ in range(4)])
    platform.monitor.findings = [leak]
    status = run_on(
        spec(variants=VARIANTS, workload={"onConnect": ["SET jit = off"], "threads": 3, "holdSeconds": 1}), platform
    )
    assert [line for line in platform.monitor.log if line.startswith("probe")] == [
        "probe 127.0.0.1:6432 transaction SET jit = off"
    ]
    direct, tx = status.variants
    assert direct.compatibility is None
    assert tx.compatibility is not None
    assert tx.compatibility.findings == [leak]
    assert tx.to_json()["compatibility"]["findings"][0]["kind"] == "sessionSettingLeaked"


def test_a_failing_variant_stops_only_its_own_steps() -> None:
    run = spec(variants=VARIANTS)
    platform = FakePlatform([Script(crashed=True, outcomes={"ok": 1, "tooManyClients": 1}), Script(), Script()])
    status = run_on(run, platform)
    direct, tx = status.variants
    assert [s.outcome for s in direct.steps] == ["Failed"]  # stopOnFailure within the variant
    assert [s.outcome for s in tx.steps] == ["Passed", "Passed"]  # the next variant still runs
    assert status.phase == "Failed"
    assert status.verdict is not None
    assert status.verdict.first_failing_replicas == 2


def test_resume_skips_finished_variants_and_steps() -> None:
    class StopsAtTheFourthStep(FakePlatform):
        def scale(self, planned: PlannedStep) -> None:
            if not self.scripts:
                raise Stopped()
            super().scale(planned)

    first = spec(variants=VARIANTS)
    platform = StopsAtTheFourthStep([Script(), Script(), Script()])
    with pytest.raises(Stopped):
        run_on(first, platform)
    saved = first.status.to_json()
    assert len(saved["variants"][0]["steps"]) == 2
    assert saved["variants"][0]["verdict"] is not None
    resumed = BenchmarkRun(first.spec, status_from_resource(saved), clock=utc_now)
    again = FakePlatform([Script(), Script()])
    status = run_on(resumed, again)
    assert again.variants == ["tx"]  # the finished variant is not run again
    assert [len(v.steps) for v in status.variants] == [2, 2]
    assert status.verdict == status.variants[0].verdict


def test_a_search_runs_probes_as_steps_until_adjacent_counts() -> None:
    class Oracle(FakePlatform):
        """Replicas beyond 5 crash with tooManyClients: the breaking point is 5/6."""

        def scale(self, planned: PlannedStep) -> None:
            refused = Script(crashed=True, outcomes={"tooManyClients": 1})
            self.scripts = [refused] if planned.replicas > 5 else [Script()]
            super().scale(planned)

    # 3 connections per replica, 99 usable: the arithmetic predicts 33; the platform breaks at 6.
    run = spec(steps={"search": {"min": 1, "max": 40}})
    platform = Oracle([])
    status = run_on(run, platform)
    probes = [s.replicas for s in status.variants[0].steps]
    assert probes[:2] == [33, 16]  # the prediction first, then bisection of (0, 33)
    assert len(probes) <= 2 + 6
    assert len(set(probes)) == len(probes)
    assert status.verdict is not None
    assert (status.verdict.max_safe_replicas, status.verdict.first_failing_replicas) == (5, 6)
    assert status.verdict.predicted_max_safe_replicas == 33
    assert {p.total_steps for p in platform.events if isinstance(p, Progress)} == {8}  # while it runs: at most 8 probes
    assert (status.total_steps, status.progress) == (len(probes), f"{len(probes)}/{len(probes)}")  # at the end: n/n
    assert status.phase == "BoundaryFound"
    assert [(c.type, c.status, c.reason) for c in status.conditions] == [
        ("Ready", "True", "BoundaryFound"),
        ("Reconciling", "False", "Finished"),
        ("Stalled", "False", "Finished"),
    ]
    assert "Search 1..40" in status.verdict.summary


# -- searches and variants: what the verdict, the status and the tables say ----------------------------


class BlindAt(FakeMonitor):
    """Loses every read while the platform runs one of the ``blind`` replica counts."""

    def __init__(self, platform: FakePlatform, blind: tuple[int, ...]):
        super().__init__(platform)
        self.blind = blind

    def samples(self) -> list[Sample]:
        taken = super().samples()
        if self.platform.replicas in self.blind:
            return [Sample.gap(s.t, "the monitor was killed") for s in taken]
        return taken


class Oracle(FakePlatform):
    """Replicas beyond ``breaking`` crash with tooManyClients; at the counts in ``blind`` the monitor
    loses every read (the probe is Inconclusive)."""

    def __init__(self, breaking: int, blind: tuple[int, ...] = ()):
        super().__init__([])
        self.breaking = breaking
        self.monitor = BlindAt(self, blind)

    def scale(self, planned: PlannedStep) -> None:
        refused = Script(crashed=True, outcomes={"tooManyClients": 1})
        self.scripts = [refused] if planned.replicas > self.breaking else [Script()]
        super().scale(planned)


def test_an_inconclusive_first_probe_names_only_that_probe() -> None:
    # 3 connections per replica, 99 usable: the first probe is the prediction, 33; the monitor is blind there.
    status = run_on(spec(steps={"search": {"min": 1, "max": 40}}), Oracle(breaking=40, blind=(33,)))
    assert [(s.replicas, s.outcome) for s in status.variants[0].steps] == [(33, "Inconclusive")]
    verdict = status.verdict
    assert verdict is not None
    assert (verdict.max_safe_replicas, verdict.first_failing_replicas) == (None, None)
    assert verdict.summary.startswith(
        "Search 1..40 in 1 step: stopped by the probe of 33, which was inconclusive"
        " (no probe before it); the arithmetic predicted 33. No step passed;"
        " 33 replicas were inconclusive: the monitor lost"
    )
    assert "min" not in verdict.summary
    assert "failed" not in verdict.summary
    assert status.phase == "Failed"
    assert status.conditions[0].reason == "Inconclusive"


def test_an_inconclusive_probe_after_a_bracket_names_what_was_probed() -> None:
    # 33 fails, 16 passes, then 24 (the middle) is not seen: the search stops with 16 and 33 known.
    status = run_on(spec(steps={"search": {"min": 1, "max": 40}}), Oracle(breaking=30, blind=(24,)))
    assert [(s.replicas, s.outcome) for s in status.variants[0].steps] == [
        (33, "Failed"),
        (16, "Passed"),
        (24, "Inconclusive"),
    ]
    verdict = status.verdict
    assert verdict is not None
    assert (verdict.max_safe_replicas, verdict.first_failing_replicas) == (16, None)
    assert verdict.summary.startswith(
        "Search 1..40 in 3 steps: stopped by the probe of 24, which was inconclusive"
        " (before it, 16 passed and 33 failed); the arithmetic predicted 33."
    )
    assert "the search's max" not in verdict.summary
    assert "every probe passed" not in verdict.summary
    assert status.phase == "Failed"


def test_a_search_that_bottoms_out_says_its_min_failed_only_when_the_min_was_probed() -> None:
    status = run_on(spec(steps={"search": {"min": 2, "max": 40}}), Oracle(breaking=1))
    assert status.variants[0].steps[-1].replicas == 2
    assert status.variants[0].steps[-1].outcome == "Failed"
    assert status.verdict is not None
    assert "even 2 (the search's min) failed" in status.verdict.summary
    assert status.phase == "Failed"  # nothing in the range passed: no boundary inside it


def search_with_variants() -> tuple[dict[str, Any], BenchmarkStatus]:
    variants = [
        {"name": "direct"},
        {
            "name": "tx",
            "pooler": {
                "poolMode": "transaction",
                "defaultPoolSize": 3,
                "reservePoolSize": 1,
                "maxClientConn": 200,
                "replicas": 2,
            },
        },
    ]
    status = run_on(spec(steps={"search": {"min": 1, "max": 40}}, variants=variants), Oracle(breaking=5))
    return status.full_json(), status


def test_one_first_failing_number_in_the_status_the_comparison_and_the_tables() -> None:
    from rich.console import Console

    from poolbench import tables

    document, status = search_with_variants()
    # The direct variant probes 33 first (the prediction), fails there, and bisects down to 5/6.
    direct = status.variants[0]
    assert direct.steps[0].replicas == 33
    assert direct.steps[0].outcome == "Failed"
    assert direct.verdict is not None
    assert direct.verdict.first_failing_replicas == 6
    assert "direct: 5 replicas safe, fails at 6 (tooManyClients)" in status.comparison
    assert status.short_verdict == "safe 5, fails at 6: tooManyClients"  # the first variant's, as status.verdict
    assert BenchmarkStatus.model_validate(status.to_json()) == status
    console = Console(width=200, record=True)
    console.print(tables.comparison_table(document))
    rows = [line for line in console.export_text().splitlines() if line.startswith("│")]
    assert "│ 6 (tooManyClients) " in rows[0], rows[0]
    assert "33" not in rows[0], rows[0]
    # The comparison column names the pooler as its verdict does: pool + reserve, instances.
    assert "PgBouncer transaction, pool 3+1 × 2 instances, QueuePool" in " ".join(rows)
    tx = status.variants[1]
    assert tx.verdict is not None
    assert f"fails at {tx.verdict.first_failing_replicas} " in status.comparison
    assert f"│ {tx.verdict.first_failing_replicas} (tooManyClients)" in rows[1]
    # The "First error" line under each table is the first failing step's.
    first = tables.stopping_step(document["variants"][0]["verdict"], document["variants"][0]["steps"])
    assert first is not None
    assert first["replicas"] == 6


def test_a_search_that_found_its_boundary_ends_boundary_found_at_n_of_n() -> None:
    document, status = search_with_variants()
    ran = sum(len(v.steps) for v in status.variants)
    assert status.phase == "BoundaryFound"
    assert (status.total_steps, status.current_step, status.progress) == (ran, ran, f"{ran}/{ran}")
    assert document["phase"] == "BoundaryFound"


def test_progress_counts_the_steps_that_ran_as_it_goes() -> None:
    class Watched(Oracle):
        def __init__(self, run: BenchmarkRun):
            super().__init__(breaking=5)
            self.run, self.seen = run, list[str]()

        def notify(self, event: LoopEvent) -> None:
            super().notify(event)
            if isinstance(event, StepStarted):
                self.seen.append(self.run.status.progress)

    run = spec(steps={"search": {"min": 1, "max": 40}}, variants=VARIANTS)
    platform = Watched(run)
    status = run_on(run, platform)
    first = len(status.variants[0].steps)  # of at most 8 probes
    # The first variant: 1/16, 2/16, …; the second starts right after what the first ran, of first + 8.
    assert platform.seen[:first] == [f"{i}/16" for i in range(1, first + 1)]
    assert platform.seen[first] == f"{first + 1}/{first + 8}"
    ran = first + len(status.variants[1].steps)
    assert len(platform.seen) == ran
    assert status.progress == f"{ran}/{ran}"


def test_progress_reaches_n_of_n_when_a_variant_stopped_early() -> None:
    # The direct variant fails its first step (stopOnFailure); the tx variant runs both: 3 steps of 4 planned.
    run = spec(variants=VARIANTS)
    platform = FakePlatform([Script(crashed=True, outcomes={"tooManyClients": 1}), Script(), Script()])
    status = run_on(run, platform)
    assert [len(v.steps) for v in status.variants] == [1, 2]
    assert (status.total_steps, status.current_step, status.progress) == (3, 3, "3/3")
    assert status.phase == "Failed"  # a list of steps has no boundary to find


def test_unknown_connection_ages_are_null_not_zero() -> None:
    # No backend is open when the work ends (no ghosts): no age was read.
    status = run_on(spec(steps=[2]), FakePlatform([Script(ghosts_per_replica=0)]))
    ages = status.variants[0].steps[0].connection_age_seconds
    assert (ages.p50, ages.max) == (None, None)
    assert "connectionAgeSeconds" not in status.to_json()["variants"][0]["steps"][0]  # null: not written
    assert status.full_json()["variants"][0]["steps"][0]["connectionAgeSeconds"] == {"p50": None, "max": None}


def test_one_replica_and_one_step_are_singular() -> None:
    status = run_on(spec(steps={"search": {"min": 1, "max": 2}}), Oracle(breaking=5))
    assert status.verdict is not None
    assert status.verdict.summary.startswith("Search 1..2 in 1 step: up to 2 (the search's max) every probe passed")
    status = run_on(spec(steps=[1]), FakePlatform([Script()]))
    assert status.verdict is not None
    assert status.verdict.summary.startswith(
        "All steps passed up to 1 replica (each may open 3; at most 33 replicas fit in 99 usable connections)"
    )
    platform = FakePlatform([Script(crashed=True, outcomes={"tooManyClients": 1})])
    status = run_on(spec(steps=[1]), platform)
    assert status.verdict is not None
    assert status.verdict.summary.startswith("No step passed; 1 replica failed with tooManyClients")
    started = kinds(platform, StepStarted)[0]
    finished = kinds(platform, StepFinished)[0]
    assert isinstance(started, StepStarted)
    assert "scaling the workload to 1 replica (" in started.message
    assert isinstance(finished, StepFinished)
    assert finished.message.startswith("step 1: 1 replica Failed")


class RollingMonitor(FakeMonitor):
    """Reads each cohort's connections under its own name."""

    def __init__(self, platform: Rolling):
        super().__init__(platform)
        self.rolling = platform

    def read_until(self, until: float) -> None:
        cohorts = self.rolling.cohorts
        if not cohorts:
            super().read_until(until)
            return
        while self.next_sample <= until:
            t = self.next_sample
            by_app = {name: count * Rolling.held(script, t - started) for name, script, started, count in cohorts}
            total = sum(by_app.values())
            self.pending.append(Sample(t=t, total=total, by_state={"active": total}, by_app=by_app))
            self.next_sample = round(self.next_sample + INTERVAL, 6)


class Rolling(FakePlatform):
    """A rolling update's two cohorts, each by its own script: the old replicas (the step's first
    scale) and the surge pods (its second), named ``old`` and ``new`` in the samples."""

    def __init__(self, scripts: list[Script], old: Script, surge: Script):
        super().__init__(scripts)
        self.old, self.surge = old, surge
        self.cohorts: list[tuple[str, Script, float, int]] = []  # (name, script, started, replicas)
        self.monitor = RollingMonitor(self)

    def scale(self, planned: PlannedStep) -> None:
        if planned.rollout_from is None:
            super().scale(planned)
            return
        self.calls.append(f"scale {planned.replicas}")
        name, script = ("old", self.old) if not self.cohorts else ("new", self.surge)
        self.cohorts.append((name, script, self.t, planned.replicas - sum(c[3] for c in self.cohorts)))
        self.script, self.replicas = script, planned.replicas

    @staticmethod
    def held(script: Script, age: float) -> int:
        if script.finished_at is not None and age >= script.finished_at:
            return 0
        if script.work_done_at is not None and age >= script.work_done_at:
            return script.ghosts_per_replica
        return script.connections_per_replica

    def observe(self, expected: int) -> ReplicaProgress:
        if not self.cohorts:
            return super().observe(expected)
        ages = [(script, self.t - started) for _, script, started, _ in self.cohorts]
        work_done = all(s.work_done_at is not None and age >= s.work_done_at for s, age in ages)
        finished = all(s.finished_at is not None and age >= s.finished_at for s, age in ages)
        return ReplicaProgress(running=0 if finished else expected, work_done=work_done, finished=finished)

    def replica_names(self) -> list[str]:
        return [c[0] for c in self.cohorts] if self.cohorts else super().replica_names()

    def collect(self) -> list[ReplicaReport]:
        if not self.cohorts:
            return super().collect()
        self.calls.append("collect")
        return [
            ReplicaReport(f"{name}{i}", outcomes=dict(script.outcomes))
            for name, script, _, count in self.cohorts
            for i in range(count)
        ]

    def scale_to_zero(self) -> None:
        self.cohorts = []
        super().scale_to_zero()


def rolling_run() -> BenchmarkRun:
    # 3 connections per replica; 2 replicas pass; rolled with maxSurge 1: 3 pods, predicted 9.
    return spec(steps=[2], rollout={"maxSurge": 1, "measure": True})


def test_a_rollout_whose_old_replicas_hold_their_connections_beside_the_surge_passes() -> None:
    old = Script(work_done_at=1.0, finished_at=1.5, connections_per_replica=3, ghosts_per_replica=3)
    surge = Script(work_done_at=0.5, finished_at=1.0)
    status = run_on(rolling_run(), Rolling([Script()], old, surge))
    rollout = status.variants[0].steps[-1]
    assert rollout.rollout_from == 2, rollout.reason
    assert rollout.outcome == "Passed", rollout.reason
    assert rollout.peak_connections == rollout.predicted_peak == 9
    overlap = rollout.rollout_overlap
    assert overlap is not None
    assert overlap.achieved
    assert overlap.measured_by == "applicationName"
    assert (overlap.old_connections, overlap.old_connections_at_surge_peak, overlap.surge_peak_connections) == (6, 6, 3)
    assert status.phase == "Completed"
    assert status.verdict is not None
    assert status.verdict.summary.startswith("All steps passed up to 2 replicas")
    assert "2 replicas stay safe during a rolling update" in status.verdict.summary


def test_a_rollout_whose_old_replicas_were_gone_before_the_surge_is_inconclusive_never_passed() -> None:
    # The old replicas open 2 connections each (never the 3 waited for) and are gone at 0.3 s, when
    # their work is done: the surge pods start after them and the server never holds both.
    old = Script(work_done_at=0.3, finished_at=0.3, connections_per_replica=2)
    surge = Script(work_done_at=0.5, finished_at=1.0)
    status = run_on(rolling_run(), Rolling([Script()], old, surge))
    rollout = status.variants[0].steps[-1]
    assert rollout.outcome == "Inconclusive"
    assert rollout.errors.total() == 0
    overlap = rollout.rollout_overlap
    assert overlap is not None
    assert not overlap.achieved
    assert (overlap.old_connections, overlap.old_connections_at_surge_peak, overlap.surge_peak_connections) == (4, 0, 3)
    assert rollout.reason is not None
    assert rollout.reason.startswith(
        "old and new replicas did not overlap as in a rolling update: the old replicas held 0 of their 4"
        " connections when the surge pods peaked at 3"
    )
    verdict = status.verdict
    assert verdict is not None
    assert verdict.max_safe_replicas == 2
    assert not verdict.summary.startswith("All steps passed")
    assert verdict.summary.startswith(
        "Every step at rest passed up to 2 replicas, but the rolling update of 2 replicas was inconclusive"
    )
    assert "whether 2 replicas stay safe during a rolling update was not measured" in verdict.summary
    assert status.phase == "Failed"
    assert [c.reason for c in status.conditions if c.type == "Ready"] == ["Inconclusive"]


def test_a_failing_rollout_never_opens_the_summary_with_all_steps_passed() -> None:
    old = Script(work_done_at=1.0, finished_at=1.5, ghosts_per_replica=3)
    surge = Script(work_done_at=0.5, finished_at=1.0, outcomes={"ok": 3, "tooManyClients": 2})
    status = run_on(rolling_run(), Rolling([Script()], old, surge))
    rollout = status.variants[0].steps[-1]
    assert rollout.outcome == "Failed"
    assert rollout.rollout_overlap is not None
    assert rollout.rollout_overlap.achieved
    verdict = status.verdict
    assert verdict is not None
    assert verdict.max_safe_replicas == 2
    assert verdict.summary.startswith(
        "Every step at rest passed up to 2 replicas, but the rolling update of 2 replicas failed"
    )
    assert "2 replicas are safe at rest but not during a rolling update" in verdict.summary


def test_pooled_overlap_is_judged_from_the_replicas_work_times() -> None:
    def report(name: str, start: float, end: float) -> ReplicaReport:
        return ReplicaReport(name, work_started_at=start, work_ended_at=end)

    overlapping = [report("a", 100.0, 110.0), report("b", 100.5, 109.0), report("c", 105.0, 115.0)]
    assert rollout_overlap(["a", "b"], [], overlapping, pooled=True, usable=99).achieved
    apart = [report("a", 100.0, 101.0), report("b", 100.5, 102.0), report("c", 103.5, 110.0)]
    overlap = rollout_overlap(["a", "b"], [], apart, pooled=True, usable=99)
    assert not overlap.achieved
    assert overlap.measured_by == "workTimes"
    assert overlap.detail == "an old replica had finished its work 2.5 s before the last surge pod started its work"
    unknown = [report("a", 100.0, 110.0), ReplicaReport("c")]
    assert not rollout_overlap(["a"], [], unknown, pooled=True, usable=99).achieved


def test_direct_overlap_needs_the_surge_peak_beside_every_old_connection_or_a_full_server() -> None:
    def reads(*pairs: tuple[int, int]) -> list[Sample]:
        return [
            Sample(t=i / 10, total=old + new, by_app={"old0": old, "new0": new}) for i, (old, new) in enumerate(pairs)
        ]

    # Refused for want of slots: 12 old + 1 new fill the 13 usable; the surge's 4 come after the old ones.
    full = rollout_overlap(["old0"], reads((12, 0), (12, 1), (0, 4)), [], pooled=False, usable=13)
    assert full.achieved
    assert full.detail == (
        "the old replicas held all 12 of their connections while the surge pods took the rest of the 13 usable"
    )
    # Room to spare, yet the surge pod held 1 beside the old ones and its 3 only once they were gone.
    apart = rollout_overlap(["old0"], reads((6, 0), (6, 1), (0, 3)), [], pooled=False, usable=19)
    assert not apart.achieved
    assert (apart.old_connections, apart.old_connections_at_surge_peak, apart.surge_peak_connections) == (6, 0, 3)
    assert apart.detail.endswith("(beside all of theirs the surge pods held at most 1)")
    beside = rollout_overlap(["old0"], reads((6, 0), (6, 3), (0, 3)), [], pooled=False, usable=19)
    assert beside.achieved
    assert beside.old_connections_at_surge_peak == 6


def test_a_rollout_that_passed_below_its_prediction_is_not_called_safe() -> None:
    # 7 usable: 2 replicas × 3 fit, rolled with 1 surge pod the arithmetic needs 9. The pools open only
    # 2 connections each here (6 at once), so the step passes, yet the verdict may not call 2 safe.
    old = Script(work_done_at=1.0, finished_at=1.5, connections_per_replica=2, ghosts_per_replica=2)
    surge = Script(work_done_at=0.5, finished_at=1.0, connections_per_replica=2)
    run = spec(steps=[2], postgres={"maxConnections": 8}, rollout={"maxSurge": 1, "measure": True})
    platform = Rolling([Script()], old, surge)
    status = run_on(run, platform)
    rollout = status.variants[0].steps[-1]
    assert rollout.outcome == "Passed"
    assert rollout.peak_connections == 6
    assert rollout.predicted_peak == 9
    started = [e for e in kinds(platform, StepStarted) if isinstance(e, StepStarted)]
    assert "a rolling update: 2 replicas, then 1 surge pod beside them (predicted peak 9" in started[-1].message
    assert status.verdict is not None
    assert "by the arithmetic 2 replicas do not stay safe during a rolling update" in status.verdict.summary
    assert "stay safe during a rolling update." not in status.verdict.summary.replace("do not stay safe", "")
    assert "During a rolling update (maxSurge 1) at most 1 replica" in status.verdict.summary
    assert "the 2 old replicas kept, 1 surge pod started beside them, no pod replaced" in status.verdict.summary


def test_a_rollout_without_surge_pods_has_nothing_to_overlap() -> None:
    # maxSurge 0: the rolling update never runs more than the 2 replicas; the step measures those.
    old = Script(work_done_at=0.5, finished_at=1.0)
    run = spec(steps=[2], rollout={"maxSurge": 0, "measure": True})
    status = run_on(run, Rolling([Script()], old, Script()))
    rollout = status.variants[0].steps[-1]
    assert rollout.replicas == rollout.rollout_from == 2, rollout.reason
    assert rollout.outcome == "Passed", rollout.reason
    assert rollout.rollout_overlap is not None
    assert rollout.rollout_overlap.achieved
    assert status.verdict is not None
    assert "2 replicas stay safe during a rolling update" in status.verdict.summary
