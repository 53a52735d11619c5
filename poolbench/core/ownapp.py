"""The user's own Deployment against the user's own PostgreSQL: watched (Observe) or stepped (Step). Pure:
a ``Platform`` does every read, scale and status write; ``tests/test_ownapp.py`` drives both with a fake.

Why not the step loop (``steploop.run_steps``): that loop owns the replicas it runs. Every step starts
from a clean slate (the workload scaled to zero, the server waited on until it shows no client backend,
what is left terminated), every replica reports its own work, and a step ends when the replicas say so.
None of that may happen to an app poolbench does not own: scaling a user's app to zero or terminating
its backends is what must never happen, its pods report nothing, and the server has other tenants.
Here a step is: scale to N, wait for N ready pods, hold, attribute every backend (by pod IP, then the
match rule), and stop before the server refuses anyone; the replica count the user had is recorded
before the first scale and put back at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .attribution import Attribution, Backend, MatchRule, attribute
from .budget import app_pools_peak, compare_pools, own_app_answer
from .observation import Observation
from .results import (
    AnswerStatus,
    BenchmarkStatus,
    ObservationStatus,
    OwnStepResult,
    PodHealth,
    PoolsComparisonStatus,
    SeriesPointStatus,
    TargetStatus,
    Verdict,
)
from .sampling import STATE_KEYS
from .spec import PoolBenchmarkSpec
from .words import counted, own_app_short_words, own_app_words, pools_words

#: Longest termination message kept per pod.
MESSAGE_MAX = 300

Clock = Callable[[], str]  # the wall clock status is stamped with (RFC 3339), the platform's


@dataclass(frozen=True)
class PodSeen:
    """One of the Deployment's pods at one look (a terminating one is never ready)."""

    name: str
    ip: str | None
    ready: bool
    restarts: int = 0
    last_reason: str | None = None
    last_message: str | None = None


@dataclass(frozen=True)
class Look:
    """One read of the Deployment and the server. ``backends`` None: the server could not be read."""

    replicas: int | None  # the Deployment's spec.replicas (whatever an HPA or a person set)
    pods: Sequence[PodSeen]
    backends: Sequence[Backend] | None
    error: str | None = None

    def pod_ips(self) -> dict[str, str]:
        return {p.ip: p.name for p in self.pods if p.ip}

    def ready(self) -> int:
        return sum(1 for p in self.pods if p.ready)


class Platform(Protocol):
    """The cluster and the server as a run sees them; the status it writes is ``OwnAppRun.status``."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def wait(self, seconds: float) -> None:
        """Sleep; raise (the platform's own exception) when the run must end."""
        ...

    def look(self) -> Look: ...

    def scale(self, replicas: int) -> None:
        """Set the Deployment's replica count (its scale subresource)."""
        ...

    def start_load(self, step: int) -> str | None:
        """Start the user's load Job for step ``step`` (1-based); its name, or None without spec.target.load."""
        ...

    def stop_load(self, step: int) -> None: ...

    def restore(self) -> None:
        """Put the original replica count back and read it back (``OwnAppRun.mark_restored``)."""
        ...

    def write(self, force: bool = False) -> None:
        """Write the status: a routine write may be held back (throttled); a boundary (force) is not."""
        ...

    def event(self, kind: str, reason: str, message: str) -> None: ...


def app_backends_by_state(attribution: Attribution) -> dict[str, int]:
    """The app's backends of one read (every pod's and the unplaced ones), by state as the monitor
    names them (``sampling.STATE_KEYS``)."""
    out: dict[str, int] = {}
    for backends in (*attribution.by_pod.values(), attribution.app_unplaced):
        for backend in backends:
            key = STATE_KEYS.get(backend.state or "", "other")
            out[key] = out.get(key, 0) + 1
    return out


@dataclass
class OwnAppRun:
    """A run's state: the status being written, the observations it is built from."""

    spec: PoolBenchmarkSpec
    status: BenchmarkStatus
    usable: int
    clock: Clock
    overall: Observation = field(default_factory=Observation)
    baseline_restarts: dict[str, int] = field(default_factory=dict)
    looked: bool = False  # a first look was taken: pods seen later are new, their restarts the run's
    live_by_state: dict[str, int] = field(default_factory=dict)  # the app's backends at the last read, by state
    prior_restarts: dict[str, int] = field(default_factory=dict)  # a resumed watch's restarts, counted before

    def __post_init__(self) -> None:
        target = self.spec.target
        assert target is not None, "an own-app run has a target"
        match = target.match
        self.match = MatchRule(match.usename, match.application_name, match.datname) if match is not None else None
        self.fraction = self.spec.safety.stop_at_used_fraction

    @property
    def target(self) -> TargetStatus:
        assert self.status.target is not None
        return self.status.target

    # -- one look -------------------------------------------------------------------------------
    def add(self, t: float, look: Look, step: Observation | None = None) -> int | None:
        """Account one look into the whole run (and ``step``'s observation); the client backends the
        server held (None: not read)."""
        self.track_health(look.pods)
        if look.replicas is not None:
            self.status.replicas = look.replicas
        if look.backends is None:
            self.target.sample_gaps += 1
            self.target.monitor_error = look.error
            return None
        attribution = attribute(look.backends, look.pod_ips(), self.match)
        self.overall.add(t, look.replicas, attribution, self.usable)
        if step is not None:
            step.add(t, look.replicas, attribution, self.usable)
        self.status.live_connections = attribution.app_total
        self.live_by_state = app_backends_by_state(attribution)
        self.status.peak_connections = self.overall.app_peak
        self.target.replicas_over_time = series(self.overall)
        return len(look.backends)

    def track_health(self, pods: Sequence[PodSeen]) -> None:
        """Restarts since the run began (a pod first seen counts from zero: a new pod's restarts are
        the run's), and the last termination: an app the server refuses crashes."""
        for pod in pods:
            base = self.baseline_restarts.setdefault(pod.name, 0 if self.looked else pod.restarts)
            restarts = pod.restarts - base
            if restarts > 0:
                message = (pod.last_message or "")[:MESSAGE_MAX] or None
                self.target.pod_health[pod.name] = PodHealth(
                    restarts=restarts + self.prior_restarts.get(pod.name, 0),
                    last_termination_reason=pod.last_reason,
                    last_termination_message=message,
                )
        self.status.failures = sum(h.restarts for h in self.target.pod_health.values())
        self.looked = True

    def resume(self, before: TargetStatus, elapsed: float) -> None:
        """Go on with a watch an operator restart cut, ``elapsed`` seconds after it began: its peaks,
        series, restarts and failed reads as the status kept them. The time nothing was read is said
        in ``warnings``; restarts of the app's pods while the operator was down are not counted (a
        pod's count is taken afresh at the first look, as at the start)."""
        if before.observation is not None:
            self.overall = Observation.from_status(before.observation.model_dump(by_alias=True, mode="json"))
            self.target.observation = before.observation
            self.target.replicas_over_time = series(self.overall)
            self.status.peak_connections = self.overall.app_peak
        self.target.observe_started_at = before.observe_started_at
        self.target.pod_health = dict(before.pod_health)
        self.prior_restarts = {pod: health.restarts for pod, health in before.pod_health.items()}
        self.status.failures = sum(self.prior_restarts.values())
        self.target.sample_gaps = before.sample_gaps
        last = self.overall.last_t if self.overall.last_t is not None else 0.0
        self.target.warnings.append(
            f"the operator restarted {elapsed:.0f}s into the watch: nothing was read from {last:.0f}s to"
            f" {elapsed:.0f}s; what was read before is kept"
        )

    def over_the_line(self, used: int | None) -> bool:
        return used is not None and used >= self.fraction * self.usable

    def stop_words(self, used: int) -> str:
        return f"stopped at {used} of {self.usable} usable ({self.fraction:g})"

    def pools_compared(self, observation: Observation) -> PoolsComparisonStatus | None:
        """spec.target.pools' predicted per-pod peak beside ``observation``'s (None without spec.target.pools)."""
        pools = self.spec.target.pools if self.spec.target is not None else None
        if pools is None:
            return None
        comparison = compare_pools(pools, observation.per_pod_peak, observation.per_pod_kept_idle_peak)
        return PoolsComparisonStatus(
            predicted_per_pod=comparison.predicted_peak,
            predicted_kept_idle_per_pod=comparison.predicted_idle,
            measured_per_pod=comparison.measured_peak,
            measured_kept_idle_per_pod=comparison.measured_idle,
            over_predicted=comparison.over,
            words=pools_words(pools, comparison),
        )

    # -- the end ----------------------------------------------------------------------------------
    def answer(self, max_surge: int | str | None, hpa_max: int | None, replicas: int | None) -> str:
        """The answer from the measured per-pod peak and the others' peak, in status and in words; from
        spec.target.pools' predicted peak when no pod's connection was measured (and said so)."""
        per_pod, per_pod_from = self.overall.per_pod_peak, "measured"
        pools = self.spec.target.pools if self.spec.target is not None else None
        if per_pod == 0 and pools is not None:
            per_pod, per_pod_from = app_pools_peak(pools), "predicted"
        answer = own_app_answer(
            per_pod, self.usable, self.overall.others_peak, max_surge, hpa_max, replicas, per_pod_from
        )
        words = own_app_words(answer)
        compared = self.pools_compared(self.overall)
        self.target.pools = compared
        if compared is not None:
            words += f"; {compared.words}"
        self.target.answer = AnswerStatus.model_validate(answer.to_status())
        self.target.answer_words = words
        self.status.verdict = Verdict(
            max_safe_replicas=answer.safe_in_rollout if answer.per_pod else None,
            reason=words,
            summary=words,
        )
        self.status.short_verdict = own_app_short_words(answer)
        return words

    def mark_restored(self, replicas: int) -> str:
        return mark_restored(self.target, replicas)

    def finish(self, message: str) -> None:
        self.status.phase = "Completed"
        self.status.message = message
        self.status.updated_at = self.clock()


def mark_restored(target: TargetStatus, replicas: int) -> str:
    """The Deployment was read back with ``replicas``: restored only when that is the original."""
    original = target.original_replicas
    if original is None:
        return ""
    target.restored = replicas == original
    target.restore_message = (
        f"replicas restored to {original} (read back from the Deployment)"
        if target.restored
        else f"replicas set to {original} but read back as {replicas}"
    )
    return target.restore_message


def series(observation: Observation) -> list[SeriesPointStatus]:
    return [SeriesPointStatus.model_validate(p.to_status()) for p in observation.series]


def observation_status(observation: Observation) -> ObservationStatus:
    return ObservationStatus.model_validate(observation.to_status())


def observe(run: OwnAppRun, platform: Platform, interval: float, elapsed: float = 0.0) -> None:
    """Observe: change nothing; read the Deployment and the server every ``interval`` for durationSeconds.
    ``elapsed``: a resumed watch (``OwnAppRun.resume``) began that long ago and goes on to its end; when
    its time ran out meanwhile, what was read before is the whole watch."""
    target = run.spec.target
    assert target is not None
    start = platform.now() - elapsed
    end = start + target.duration_seconds
    if not elapsed:
        run.target.observe_started_at = run.clock()
    run.status.progress = "observing"
    platform.write(force=True)
    if elapsed >= target.duration_seconds and run.overall.reads:
        return
    while True:
        now = platform.now()
        run.add(now - start, platform.look())
        run.target.observation = observation_status(run.overall)
        run.target.pools = run.pools_compared(run.overall)
        platform.write()
        if now >= end:
            break
        platform.wait(min(interval, end - now))


def step_through(run: OwnAppRun, platform: Platform, interval: float) -> None:
    """Step: scale through spec.steps, each held holdSeconds once its pods are ready; stop before the
    server refuses. The original replica count is in the status, written, before the first scale;
    it is put back at the end (and by the caller on any other way out)."""
    target = run.spec.target
    assert target is not None
    steps = run.spec.step_counts()
    start = platform.now()
    first = platform.look()
    if run.target.original_replicas is None:
        run.target.original_replicas = first.replicas if first.replicas is not None else 0
    run.status.total_steps = len(steps)
    platform.write(force=True)  # the original is written before anything is scaled
    for index, replicas in enumerate(steps, start=1):
        result = OwnStepResult(replicas=replicas, started_at=run.clock())
        run.target.steps.append(result)
        run.status.current_step = index
        run.status.progress = f"{index}/{len(steps)}"
        platform.write(force=True)
        platform.event("Normal", "StepStarted", f"step {index}/{len(steps)}: scaling to {counted(replicas, 'replica')}")
        platform.scale(replicas)
        used_at_stop = hold(run, platform, result, index, replicas, start, interval)
        result.finished_at = run.clock()
        if used_at_stop is not None:
            result.stopped = True
            result.stop_reason = run.stop_words(used_at_stop)
            run.target.stopped_at_step = index
            platform.write(force=True)
            platform.event(
                "Warning", "SafetyStop", f"step {index}: {result.stop_reason}; scaling back, no further steps"
            )
            platform.restore()
            break
        platform.write(force=True)
        if not result.ready:
            platform.event(
                "Warning",
                "NotReady",
                f"step {index}: {result.ready_replicas} of {replicas} pods ready after"
                f" {run.spec.step_timeout_seconds}s; no further steps",
            )
            break
        platform.event(
            "Normal",
            "StepFinished",
            f"step {index}: {counted(replicas, 'replica')} held {target.hold_seconds}s, app peak"
            f" {result.observation.app_peak}, per pod {result.observation.per_pod_peak}",
        )
    platform.restore()


def hold(
    run: OwnAppRun, platform: Platform, result: OwnStepResult, index: int, replicas: int, start: float, interval: float
) -> int | None:
    """Wait for ``replicas`` ready pods, then hold holdSeconds (with the load Job, if any), reading all
    along; the client backends at a safety stop, else None."""
    target = run.spec.target
    assert target is not None
    observation = Observation()
    ready_by = platform.now() + run.spec.step_timeout_seconds
    hold_until: float | None = None
    load_started = False
    try:
        while True:
            now = platform.now()
            look = platform.look()
            used = run.add(now - start, look, observation)
            result.observation = observation_status(observation)
            result.pools = run.pools_compared(observation)
            result.ready_replicas = look.ready()
            if run.over_the_line(used):
                return used
            if hold_until is None:
                if look.ready() >= replicas and (look.replicas is None or look.replicas == replicas):
                    result.ready = True
                    hold_until = now + target.hold_seconds
                    result.load_job = platform.start_load(index)
                    load_started = True
                    platform.write(force=True)
                elif now >= ready_by:
                    return None
            elif now >= hold_until:
                return None
            platform.write()
            platform.wait(interval)
    finally:
        if load_started:
            platform.stop_load(index)


def answer_and_finish(run: OwnAppRun, max_surge: int | str | None, hpa_max: int | None, replicas: int | None) -> str:
    """The answer, and the run's last message; phase Completed."""
    words = run.answer(max_surge, hpa_max, replicas)
    target = run.target
    parts = []
    if target.stopped_at_step is not None:
        stopped = target.steps[target.stopped_at_step - 1]
        parts.append(f"step {target.stopped_at_step} {stopped.stop_reason}; no further steps")
    unready = next((i for i, s in enumerate(target.steps, start=1) if not s.ready and not s.stopped), None)
    if unready is not None:
        step = target.steps[unready - 1]
        parts.append(
            f"step {unready}: {step.ready_replicas} of {counted(step.replicas, 'pod')} ready after"
            f" {run.spec.step_timeout_seconds}s; no further steps"
        )
    if target.mode == "Step" and target.restore_message:
        parts.append(target.restore_message)
    parts.append(words)
    message = "; ".join(parts)
    run.finish(message)
    return message
