"""The own-app run (``poolbench.core.ownapp``) on a fake cluster and server: Observe records what others
change, Step records the original count before it scales, puts it back, and stops before the server refuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from poolbench.core.attribution import Backend
from poolbench.core.observation import Observation
from poolbench.core.ownapp import Look, OwnAppRun, PodSeen, answer_and_finish, mark_restored, observe, step_through
from poolbench.core.results import BenchmarkStatus, PodHealth, TargetStatus
from poolbench.core.spec import parse_spec

pytestmark = pytest.mark.unit

DATABASE = {"host": "10.0.0.5", "monitorSecret": {"name": "pb-monitor"}}


class Ended(Exception):
    pass


@dataclass
class FakeCluster:
    """A Deployment whose pods become ready ``ready_after`` seconds after a scale, each holding
    ``per_pod`` backends from its IP, beside ``others`` backends of another tenant."""

    replicas: int = 2
    per_pod: int = 3
    others: int = 4
    ready_after: float = 1.0
    t: float = 0.0
    scaled_at: float = -100.0
    calls: list[tuple[str, Any]] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    jobs: set[str] = field(default_factory=set)
    run: OwnAppRun | None = None
    changes: dict[float, int] = field(default_factory=dict)  # hand-made scale changes: at t, to n
    fail_reads_at: set[int] = field(default_factory=set)
    reads: int = 0
    deployment_replicas_override: int | None = None
    load: bool = False
    stop_at: float = 10_000.0  # the watcher stops (an operator killed) once the clock passes it

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.t += seconds
        for at, n in list(self.changes.items()):
            if self.t >= at:
                self.replicas = n
                self.scaled_at = at
                del self.changes[at]
        if self.t > self.stop_at:
            raise Ended()

    def look(self) -> Look:
        self.reads += 1
        ready = self.t - self.scaled_at >= self.ready_after
        pods = [PodSeen(f"app-{i}", f"10.1.0.{i + 1}", ready) for i in range(self.replicas)]
        if self.reads in self.fail_reads_at:
            return Look(self.replicas, pods, None, "server closed the connection")
        backends = []
        pid = 100
        for pod in pods:
            for _ in range(self.per_pod if ready else 0):
                pid += 1
                backends.append(Backend(pid, "app", "", "shop", pod.ip, "idle", 5.0, 1.0))
        for _ in range(self.others):
            pid += 1
            backends.append(Backend(pid, "report", "cron", "shop", "10.9.9.9", "active", 1.0, 0.1))
        return Look(self.replicas, pods, backends)

    def scale(self, replicas: int) -> None:
        self.calls.append(("scale", replicas))
        self.replicas = replicas
        self.scaled_at = self.t

    def start_load(self, step: int) -> str | None:
        if not self.load:
            return None
        self.calls.append(("load", step))
        self.jobs.add(f"load-{step}")
        return f"load-{step}"

    def stop_load(self, step: int) -> None:
        self.calls.append(("unload", step))
        self.jobs.discard(f"load-{step}")

    def restore(self) -> None:
        assert self.run is not None
        original = self.run.target.original_replicas
        assert original is not None
        self.calls.append(("restore", original))
        self.replicas = original
        seen = self.deployment_replicas_override if self.deployment_replicas_override is not None else original
        mark_restored(self.run.target, seen)

    def write(self, force: bool = False) -> None:
        assert self.run is not None
        self.calls.append(("write", self.run.target.original_replicas))
        self.writes.append(self.run.status.to_json())

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


def make_run(cluster: FakeCluster, usable: int = 40, **target: Any) -> OwnAppRun:
    steps = target.pop("steps", None)
    safety = target.pop("safety", None)
    spec_doc: dict[str, Any] = {"database": DATABASE, "target": {"deployment": "app", **target}}
    if steps is not None:
        spec_doc["steps"] = steps
    if safety is not None:
        spec_doc["safety"] = safety
    spec_doc["stepTimeoutSeconds"] = 30
    spec = parse_spec(spec_doc)
    assert spec.target is not None
    status = BenchmarkStatus(phase="Running")
    status.target = TargetStatus(deployment="app", mode=spec.target.mode)
    run = OwnAppRun(spec, status, usable, lambda: "2026-12-02T10:00:00Z")
    cluster.run = run
    return run


def test_observe_changes_nothing_and_records_a_hand_made_scale() -> None:
    cluster = FakeCluster(replicas=2, changes={20.0: 4})
    run = make_run(cluster, mode="Observe", durationSeconds=60)
    observe(run, cluster, interval=1.0)
    message = answer_and_finish(run, "25%", None, cluster.replicas)
    assert not any(kind in ("scale", "restore") for kind, _ in cluster.calls)
    target = run.target
    assert target.observation is not None
    assert target.observation.per_pod_peak == 3
    assert target.observation.others_peak == 4
    assert set(target.observation.pods) == {"app-0", "app-1", "app-2", "app-3"}
    assert [o.model_dump() for o in target.observation.others_peak_by_owner] == [
        {"usename": "report", "application_name": "cron", "peak": 4}
    ]
    replicas_seen = [p.replicas for p in target.replicas_over_time]
    assert 2 in replicas_seen
    assert 4 in replicas_seen
    assert run.status.replicas == 4
    # 36 available: 9 pods at rest; a rollout of N adds ceil(N/4) surge pods: 8 + 2 = 10 pods = 30 <= 36
    assert target.answer is not None
    assert target.answer.safe_at_rest == 12
    assert target.answer.per_pod == 3
    assert run.status.verdict is not None
    assert run.status.verdict.max_safe_replicas == target.answer.safe_in_rollout
    assert run.status.short_verdict == f"safe 12, {target.answer.safe_in_rollout} in a rollout, refused at" + (
        f" {target.answer.refusals_from}"
    )
    assert run.status.phase == "Completed"
    assert target.answer_words in message
    assert run.status.peak_connections == 12


def test_step_records_the_original_before_the_first_scale_and_restores_it() -> None:
    cluster = FakeCluster(replicas=2, load=True)
    run = make_run(cluster, mode="Step", holdSeconds=10, steps=[1, 3])
    step_through(run, cluster, interval=1.0)
    first_scale = cluster.calls.index(("scale", 1))
    assert ("write", 2) in cluster.calls[:first_scale], "the original is written before the first scale"
    scales = [n for kind, n in cluster.calls if kind == "scale"]
    assert scales == [1, 3]
    assert cluster.calls[-2:] == [("restore", 2), ("write", 2)] or cluster.calls[-1] == ("restore", 2)
    assert cluster.replicas == 2
    target = run.target
    assert target.original_replicas == 2
    assert target.restored
    assert target.restore_message == "replicas restored to 2 (read back from the Deployment)"
    assert [s.replicas for s in target.steps] == [1, 3]
    assert all(s.ready and not s.stopped for s in target.steps)
    assert [s.observation.app_peak for s in target.steps] == [3, 9]
    assert [s.observation.per_pod_peak for s in target.steps] == [3, 3]
    assert [s.load_job for s in target.steps] == ["load-1", "load-2"]
    assert not cluster.jobs, "every load Job is deleted after its hold"
    assert cluster.calls.index(("load", 1)) < cluster.calls.index(("unload", 1)) < cluster.calls.index(("scale", 3))


def test_step_stops_before_the_server_refuses_and_runs_no_further_step() -> None:
    # 40 usable, 4 others, 4 per pod: 8 pods hold 32 + 4 = 36 = 0.9 × 40
    cluster = FakeCluster(replicas=1, per_pod=4, others=4)
    run = make_run(cluster, mode="Step", holdSeconds=10, steps=[2, 8, 9], safety={"stopAtUsedFraction": 0.9})
    step_through(run, cluster, interval=1.0)
    message = answer_and_finish(run, None, None, 1)
    target = run.target
    assert [s.replicas for s in target.steps] == [2, 8]
    assert not target.steps[0].stopped
    stopped = target.steps[1]
    assert stopped.stopped
    assert stopped.stop_reason == "stopped at 36 of 40 usable (0.9)"
    assert target.stopped_at_step == 2
    assert [n for kind, n in cluster.calls if kind == "scale"] == [2, 8]
    assert ("restore", 1) in cluster.calls
    assert cluster.replicas == 1
    assert "step 2 stopped at 36 of 40 usable (0.9); no further steps" in message
    assert any(reason == "SafetyStop" for _, reason, _ in cluster.events)


def test_pods_never_ready_end_the_steps() -> None:
    cluster = FakeCluster(replicas=1, ready_after=1e9)
    run = make_run(cluster, mode="Step", holdSeconds=10, steps=[2, 3])
    step_through(run, cluster, interval=1.0)
    target = run.target
    assert [s.replicas for s in target.steps] == [2]
    assert not target.steps[0].ready
    assert target.restored
    assert any(reason == "NotReady" for _, reason, _ in cluster.events)
    message = answer_and_finish(run, None, None, 1)
    assert "step 1: 0 of 2 pods ready after 30s; no further steps" in message


def test_a_failed_read_is_counted_not_hidden() -> None:
    cluster = FakeCluster(replicas=1, fail_reads_at={3})
    run = make_run(cluster, mode="Observe", durationSeconds=10)
    observe(run, cluster, interval=1.0)
    assert run.target.sample_gaps == 1
    assert run.target.monitor_error == "server closed the connection"


def test_restored_only_when_read_back_with_the_original() -> None:
    cluster = FakeCluster(replicas=2, deployment_replicas_override=5)
    run = make_run(cluster, mode="Step", holdSeconds=5, steps=[1])
    step_through(run, cluster, interval=1.0)
    assert not run.target.restored
    assert run.target.restore_message == "replicas set to 2 but read back as 5"


def test_restarts_of_app_pods_are_the_runs_own() -> None:
    status = BenchmarkStatus(phase="Running")
    status.target = TargetStatus(deployment="app", mode="Observe")
    cluster = FakeCluster()
    run = make_run(cluster, mode="Observe", durationSeconds=10)
    run.track_health([PodSeen("a", "10.1.0.1", True, restarts=4)])
    run.track_health([PodSeen("a", "10.1.0.1", True, restarts=5, last_reason="Error", last_message="too many clients")])
    run.track_health([PodSeen("b", "10.1.0.2", True, restarts=1, last_reason="Error")])
    health = run.target.pod_health
    assert health["a"].restarts == 1
    assert health["a"].last_termination_message == "too many clients"
    assert health["b"].restarts == 1
    assert run.status.failures == 2


def test_observe_sets_the_pools_prediction_beside_the_measured_peak() -> None:
    cluster = FakeCluster(replicas=2, per_pod=12, others=4)
    run = make_run(cluster, usable=97, mode="Observe", durationSeconds=30, pools={"threads": 20})
    observe(run, cluster, interval=1.0)
    message = answer_and_finish(run, "25%", None, cluster.replicas)
    pools = run.target.pools
    assert pools is not None
    assert (pools.predicted_per_pod, pools.predicted_kept_idle_per_pod) == (15, 5)
    assert (pools.measured_per_pod, pools.over_predicted) == (12, False)
    assert pools.words == "predicted 15 per pod from your pools (5 + 10 overflow), measured 12"
    assert run.target.answer is not None
    assert (run.target.answer.per_pod, run.target.answer.per_pod_from) == (12, "measured")
    assert run.target.answer_words.startswith("at your measured 12 per pod")
    assert run.target.answer_words.endswith("; predicted 15 per pod from your pools (5 + 10 overflow), measured 12")
    assert pools.words in message
    written = cluster.writes[-1]["target"]["pools"]
    assert (written["predictedPerPod"], written["measuredPerPod"]) == (15, 12)


def test_step_sets_predicted_beside_measured_per_step_and_says_when_a_pod_holds_more() -> None:
    # 3 processes × QueuePool 1 + 1 with 4 threads: 6 per pod at most; each pod holds 7.
    cluster = FakeCluster(replicas=1, per_pod=7, others=0)
    pools = {"processes": 3, "threads": 4, "engine": {"poolSize": 1, "maxOverflow": 1}}
    run = make_run(cluster, mode="Step", holdSeconds=5, steps=[1, 2], pools=pools)
    step_through(run, cluster, interval=1.0)
    answer_and_finish(run, None, None, 1)
    per_step = [s.pools for s in run.target.steps]
    assert all(p is not None for p in per_step)
    assert [(p.predicted_per_pod, p.measured_per_pod, p.over_predicted) for p in per_step if p] == [
        (6, 7, True),
        (6, 7, True),
    ]
    said = run.target.answer_words
    assert "predicted 6 per pod from your pools (3 processes × (1 + 1 overflow)), measured 7: a pod held 1 more" in said
    assert "a pool setting is not what spec.target.pools says" in said
    assert run.target.answer is not None
    assert run.target.answer.per_pod == 7, "the answer stays on the measured number"


def test_nothing_measured_answers_from_the_prediction_and_says_so() -> None:
    cluster = FakeCluster(replicas=2, per_pod=0, others=4)
    run = make_run(cluster, usable=40, mode="Observe", durationSeconds=10, pools={"threads": 20})
    observe(run, cluster, interval=1.0)
    answer_and_finish(run, None, None, 2)
    answer = run.target.answer
    assert answer is not None
    assert (answer.per_pod, answer.per_pod_from) == (15, "predicted")
    assert answer.safe_at_rest == 2  # 36 available, 15 per pod
    assert run.target.answer_words.startswith("nothing measured per pod, so at your pools' predicted 15 per pod")
    assert run.target.answer_words.endswith("predicted 15 per pod from your pools (5 + 10 overflow), none measured")
    assert run.status.verdict is not None
    assert run.status.verdict.max_safe_replicas == 2


def test_without_pools_no_prediction_is_shown() -> None:
    cluster = FakeCluster(replicas=1)
    run = make_run(cluster, mode="Observe", durationSeconds=5)
    observe(run, cluster, interval=1.0)
    answer_and_finish(run, None, None, 1)
    assert run.target.pools is None
    assert "predicted" not in run.target.answer_words


def test_an_observation_goes_on_from_its_status_exactly() -> None:
    """What the status keeps of a watch is what a resumed one starts from: every field as it was,
    a series merged many times over too."""
    cluster = FakeCluster(replicas=2, changes={100.0: 4, 200.0: 1})
    run = make_run(cluster, mode="Observe", durationSeconds=300)
    observe(run, cluster, interval=1.0)
    kept = run.overall.to_status()
    assert len(kept["series"]) < kept["reads"]  # 301 reads in fewer points: merged
    assert Observation.from_status(kept).to_status() == kept
    assert Observation.from_status({}).to_status() == Observation().to_status()


def test_an_observe_cut_by_an_operator_restart_goes_on_to_its_end_with_what_it_read() -> None:
    """The watch of 60 s, the operator killed at 30 s and back at 40 s: the peaks and the answer are
    the uninterrupted watch's (the app's pods were scaled from 2 to 4 at 20 s), the series runs on to
    60 s, and the 10 s nothing was read are said."""
    whole = FakeCluster(replicas=2, changes={20.0: 4})
    uninterrupted = make_run(whole, mode="Observe", durationSeconds=60)
    observe(uninterrupted, whole, interval=1.0)
    answer_and_finish(uninterrupted, "25%", None, whole.replicas)

    before = FakeCluster(replicas=2, changes={20.0: 4}, stop_at=30.0)
    cut = make_run(before, mode="Observe", durationSeconds=60)
    with pytest.raises(Ended):
        observe(cut, before, interval=1.0)
    kept = TargetStatus.model_validate(cut.status.to_json()["target"])
    assert kept.observe_started_at == "2026-12-02T10:00:00Z"
    assert kept.observation is not None
    assert kept.observation.reads == 31  # 0 .. 30 s

    after = FakeCluster(replicas=4, t=40.0)
    resumed = make_run(after, mode="Observe", durationSeconds=60)
    resumed.resume(kept, elapsed=40.0)
    observe(resumed, after, interval=1.0, elapsed=40.0)
    answer_and_finish(resumed, "25%", None, after.replicas)

    target, whole_target = resumed.target, uninterrupted.target
    assert target.observation is not None
    assert whole_target.observation is not None
    assert target.observation.reads == 31 + 21  # and 40 .. 60 s
    assert target.observation.duration_seconds == 60
    for name in ("app_peak", "per_pod_peak", "others_peak", "pods", "others_peak_by_owner"):
        assert getattr(target.observation, name) == getattr(whole_target.observation, name), name
    assert target.answer == whole_target.answer
    times = [p.t for p in target.replicas_over_time]
    assert times == sorted(times)
    assert times[-1] == 60
    assert not [t for t in times if 30 < t < 40]
    seen = [p.replicas for p in target.replicas_over_time]
    assert seen.index(2) < seen.index(4)
    assert target.observe_started_at == "2026-12-02T10:00:00Z"
    assert target.warnings == [
        "the operator restarted 40s into the watch: nothing was read from 30s to 40s; what was read before is kept"
    ]
    assert resumed.status.phase == "Completed"


def test_a_watch_whose_time_ran_out_while_the_operator_was_down_is_what_was_read() -> None:
    before = FakeCluster(replicas=2, stop_at=30.0)
    cut = make_run(before, mode="Observe", durationSeconds=60)
    with pytest.raises(Ended):
        observe(cut, before, interval=1.0)
    kept = TargetStatus.model_validate(cut.status.to_json()["target"])
    after = FakeCluster(replicas=3, t=100.0)
    resumed = make_run(after, mode="Observe", durationSeconds=60)
    resumed.resume(kept, elapsed=100.0)
    observe(resumed, after, interval=1.0, elapsed=100.0)
    answer_and_finish(resumed, "25%", None, after.replicas)
    assert after.reads == 0  # nothing read after the watch's end
    assert resumed.target.observation is not None
    assert resumed.target.observation.reads == 31
    assert resumed.target.observation.app_peak == 6  # 2 pods x 3, as read before
    assert resumed.target.answer is not None
    assert resumed.target.answer.per_pod == 3
    assert "nothing was read from 30s to 100s" in resumed.target.warnings[0]


def test_a_resumed_watch_adds_new_restarts_to_the_ones_counted_before() -> None:
    cluster = FakeCluster()
    run = make_run(cluster, mode="Observe", durationSeconds=10)
    kept = TargetStatus(deployment="app", mode="Observe", observe_started_at="2026-12-02T10:00:00Z")
    kept.pod_health = {"a": PodHealth(restarts=2, last_termination_reason="Error")}
    run.resume(kept, elapsed=5.0)
    assert run.status.failures == 2
    run.track_health([PodSeen("a", "10.1.0.1", True, restarts=7)])  # the count afresh, as at the start
    assert run.target.pod_health["a"].restarts == 2
    run.track_health([PodSeen("a", "10.1.0.1", True, restarts=8, last_reason="OOMKilled")])
    assert run.target.pod_health["a"].restarts == 3
    assert run.target.pod_health["a"].last_termination_reason == "OOMKilled"
    assert run.status.failures == 3
