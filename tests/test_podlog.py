"""Following the PostgreSQL pod's log: each line exactly once across cut streams, restarts and refusals.

The API is a fake here (and only here): what is tested is the follower's bookkeeping, which lines a
resumed stream skips and which it hands over. The real API server and kubelet are the k8s and node
tiers' (tests/k8s, tests/node).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from poolbench_operator.podlog import FORBIDDEN, Container, Overlap, PodLogSource, Position, timestamp_ns

NS = "bench"
POD = "b-postgres-0"
CONTAINER = "postgres"
SECOND = 1_000_000_000


def rfc3339nano(ns: int) -> str:
    """As Go's RFC3339Nano prints it: trailing zeros of the fraction dropped."""
    seconds, frac = divmod(ns, SECOND)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


class FakeResponse:
    """``hold``: once its data is read, the stream waits (a follow with nothing new) until shut down."""

    def __init__(self, data: bytes, chunk: int, hold: bool):
        self.data, self.chunk, self.hold = data, chunk, hold
        self.shut = threading.Event()

    def read1(self, amt: int) -> bytes:
        if not self.data and self.hold:
            self.shut.wait()
        out, self.data = self.data[: min(amt, self.chunk)], self.data[min(amt, self.chunk) :]
        return out

    def shutdown(self) -> None:
        self.shut.set()

    def close(self) -> None:
        self.shut.set()


@dataclass
class FakeCore:
    """One pod's containers and their logs as the API serves them. ``cuts``: byte lengths at which the
    next streams break off (a dropped connection); ``skew_ns``: the node's clock ahead of ours."""

    uid: str = "uid-1"
    restarts: int = 0
    running: bool = True
    logs: dict[tuple[str, int], list[tuple[int, str]]] = field(default_factory=dict)
    cuts: list[int] = field(default_factory=list)
    skew_ns: int = 0
    rotated_before_ns: int | None = None  # lines older than this are no longer served
    hold: bool = False
    error: ApiException | None = None
    pod_error: ApiException | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    after_call: dict[int, Callable[[FakeCore], None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, *texts: str, at: int | None = None, restarts: int | None = None) -> None:
        key = (self.uid, self.restarts if restarts is None else restarts)
        with self.lock:
            lines = self.logs.setdefault(key, [])
            for text in texts:
                ns = at if at is not None else max([time.time_ns(), *(n + 1 for n, _ in lines)])
                lines.append((ns, text))

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        if self.pod_error is not None:
            raise self.pod_error
        state = SimpleNamespace(running=object() if self.running else None)
        status = SimpleNamespace(
            container_statuses=[SimpleNamespace(name=CONTAINER, state=state, restart_count=self.restarts)]
        )
        return SimpleNamespace(metadata=SimpleNamespace(uid=self.uid), status=status)

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> FakeResponse:
        with self.lock:
            self.calls.append(kwargs)
            index = len(self.calls)
            if self.error is not None:
                raise self.error
            restarts = self.restarts - 1 if kwargs.get("previous") else self.restarts
            lines = self.logs.get((self.uid, restarts), [])
            since = kwargs.get("since_seconds")
            floor = time.time_ns() + self.skew_ns - since * SECOND if since is not None else 0
            if self.rotated_before_ns is not None:
                floor = max(floor, self.rotated_before_ns)
            data = b"".join(f"{rfc3339nano(ns)} {text}\n".encode() for ns, text in lines if ns >= floor)
            if self.cuts:
                data = data[: self.cuts.pop(0)]
            hook = self.after_call.get(index)
        if hook is not None:
            hook(self)
        return FakeResponse(data, chunk=7, hold=self.hold)  # small chunks: lines arrive cut in pieces

    def served(self, lines: int) -> int:
        """The bytes of the current container's first ``lines`` lines as served."""
        logged = self.logs[(self.uid, self.restarts)][:lines]
        return sum(len(f"{rfc3339nano(ns)} {text}\n".encode()) for ns, text in logged)


def api_error(status: int, message: str) -> ApiException:
    return ApiException(status=status, reason="x", body=json.dumps({"kind": "Status", "message": message}))


def collect(source: PodLogSource, count: int, timeout: float = 20.0) -> list[str]:
    """Lines until ``count`` have come (the thread's pace is not asserted), then a moment for extras."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        lines += source.read_lines()
        time.sleep(0.01)
    time.sleep(1.2)  # a duplicate would arrive with the next resumed stream
    return lines + source.read_lines()


def wait_reason(source: PodLogSource, predicate: Callable[[str | None], bool], timeout: float = 20.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = source.unavailable()
        if predicate(reason):
            return reason
        time.sleep(0.01)
    raise AssertionError(f"unavailable() stayed {source.unavailable()!r}")


@pytest.fixture
def sources() -> Any:
    made: list[PodLogSource] = []

    def make(core: FakeCore) -> PodLogSource:
        source = PodLogSource(core, NS, POD, CONTAINER)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def test_timestamps_compare_as_times_whatever_their_precision() -> None:
    assert timestamp_ns("2026-12-02T06:28:22.1234Z") == timestamp_ns("2026-12-02T06:28:22.123400000Z")
    shorter, longer = timestamp_ns("2026-12-02T06:28:22.1234Z"), timestamp_ns("2026-12-02T06:28:22.12345Z")
    assert shorter is not None
    assert longer is not None
    assert shorter < longer  # as strings, the other way round
    assert timestamp_ns("2026-12-02T07:28:22+01:00") == timestamp_ns("2026-12-02T06:28:22Z")
    assert timestamp_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert timestamp_ns("LOG:") is None


def test_the_overlap_is_skipped_up_to_the_last_line_among_those_sharing_its_time() -> None:
    position = Position(Container("u", 0), last_ns=20, at_last=2)
    overlap = Overlap(position)
    assert [overlap.new(ns) for ns in (10, 20, 20, 20, 20, 30)] == [False, False, False, True, True, True]


def test_a_stream_cut_mid_line_is_resumed_without_a_duplicate_or_a_loss(sources: Any) -> None:
    core = FakeCore()
    core.write(*(f"line {i}" for i in range(1, 6)))
    core.cuts = [core.served(3) + 5]  # three lines and a piece of the fourth, then the connection drops
    core.after_call = {1: lambda c: c.write("line 6")}
    lines = collect(sources(core), 6)
    assert lines == [f"line {i}" for i in range(1, 7)]
    assert "since_seconds" not in core.calls[0]  # the first stream: the container's whole log
    assert core.calls[1]["since_seconds"] >= 60  # resumed from before the last line handed over


def test_lines_sharing_one_timestamp_are_each_handed_over_once(sources: Any) -> None:
    core = FakeCore()
    t = time.time_ns()
    core.write("a", at=t)
    core.write("b", "c", "d", at=t + SECOND)  # one write, one timestamp
    core.write("e", at=t + 2 * SECOND)
    core.cuts = [core.served(3)]  # a, b, c: the stream ends between two lines of one timestamp
    lines = collect(sources(core), 5)
    assert lines == ["a", "b", "c", "d", "e"]


def test_a_node_clock_ahead_costs_a_whole_read_not_a_line(sources: Any) -> None:
    core = FakeCore(skew_ns=300 * SECOND)  # the resumed window starts after the last line handed over
    core.write("one", "two", "three")
    core.cuts = [core.served(1)]
    lines = collect(sources(core), 3)
    assert lines == ["one", "two", "three"]
    assert "since_seconds" in core.calls[1]
    assert "since_seconds" not in core.calls[2]


def test_a_restarted_container_is_read_to_its_end_then_the_new_one_from_its_start(sources: Any) -> None:
    core = FakeCore()
    core.write("old 1", "old 2", "old 3")
    cut = core.served(1)

    def restart(c: FakeCore) -> None:
        c.write("old 4")  # written after the connection dropped, before the container died
        c.restarts = 1
        c.write("new 1", "new 2")

    core.cuts = [cut]
    core.after_call = {1: restart}
    source = sources(core)
    lines = collect(source, 6)
    assert lines == ["old 1", "old 2", "old 3", "old 4", "new 1", "new 2"]
    assert any(call.get("previous") for call in core.calls)
    assert source.unavailable() is None


def test_a_log_rotated_before_it_was_read_says_lines_were_lost_until_the_server_restarts(sources: Any) -> None:
    core = FakeCore()
    core.write("one", "two")
    core.cuts = [core.served(1)]

    def rotate(c: FakeCore) -> None:
        c.write("three")
        c.rotated_before_ns = c.logs[("uid-1", 0)][2][0]  # "two" is gone from what the node serves

    core.after_call = {1: rotate}
    source = sources(core)
    reason = wait_reason(source, lambda r: r is not None and "lost" in r)
    assert reason is not None
    assert "lost" in reason
    lines = collect(source, 2)
    assert lines == ["one", "three"]  # what is handed over is still each line once, in order
    core.restarts = 1
    core.write("new")
    wait_reason(source, lambda r: r is None)
    assert collect(source, 1) == ["new"]


def test_a_forbidden_log_says_which_permission_is_missing(sources: Any) -> None:
    core = FakeCore(error=api_error(403, 'pods "b-postgres-0" is forbidden: cannot get resource "pods/log"'))
    core.write("never read")
    source = sources(core)
    assert source.wait_settled(10) == FORBIDDEN
    assert wait_reason(source, lambda r: r == FORBIDDEN) == "the operator may not read pods/log: grant get on pods/log"
    assert source.read_lines() == []


def test_a_log_no_kubelet_serves_says_so_with_the_api_servers_message(sources: Any) -> None:
    message = 'Get "https://10.244.0.1:10250/containerLogs/bench/b-postgres-0/postgres": connection refused'
    core = FakeCore(error=api_error(500, message))
    source = sources(core)
    reason = wait_reason(source, lambda r: r is not None and "not served" in r)
    assert reason is not None
    assert message in reason
    core.error = None
    core.write("served now")
    assert collect(source, 1) == ["served now"]
    assert source.unavailable() is None


def test_a_pod_that_is_gone_says_so_and_its_successor_is_read_from_its_start(sources: Any) -> None:
    core = FakeCore(pod_error=api_error(404, 'pods "b-postgres-0" not found'))
    source = sources(core)
    reason = wait_reason(source, lambda r: r is not None and "gone" in r)
    assert reason == f"the PostgreSQL pod {NS}/{POD} is gone"
    core.pod_error, core.uid = None, "uid-2"
    core.write("first of the new pod")
    assert collect(source, 1) == ["first of the new pod"]


def test_close_ends_the_thread_even_while_a_stream_waits(sources: Any) -> None:
    core = FakeCore(hold=True)
    core.write("x")
    source = sources(core)
    assert source.wait_settled(10) is None
    assert collect(source, 1) == ["x"]
    source.close()
    assert not source._thread.is_alive()
