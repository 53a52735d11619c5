"""The PostgreSQL pod's log, followed through the API server: the cluster's ``LogSource``.

A daemon thread follows the container's log (``pods/log`` with ``follow``), so neither kopf's event
loop nor the step loop ever waits on it; the step loop drains what it read with ``read_lines``.

Every line comes once, in order. The log is asked for with the kubelet's timestamps, which order the
lines of one container; a stream that ends while the same container still runs (a dropped connection,
an idle read timeout) is followed again from a little before its last line, and the overlap is skipped
up to the last line already handed over (counting lines that share its timestamp). When the overlap
is not there (the node's clock ahead of the operator's), the container's whole log is read instead;
when even that lacks it (rotated away), the lines in between are lost and ``unavailable`` says so
until a new container starts. A restarted container is first read to its end (``previous``), then
the new one from its start: a new server, whose log owes nothing to the old one's.

What cannot be read is said, never guessed: no permission (403), a node whose kubelet does not serve
logs, a pod that is gone. ``unavailable`` returns that reason while it holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

#: How far before the last line read a stream of the same container starts again (beyond the time since
#: that line): covers a node clock this far ahead of the operator's; a larger skew costs a full read.
OVERLAP_SECONDS = 60
#: A follow that reads nothing this long is opened again (a connection that died silently never ends).
IDLE_READ_SECONDS = 60.0
CONNECT_SECONDS = 10.0
WAIT_SECONDS = 0.5  # between two looks at a container that is not running yet
RETRY_SECONDS = 2.0  # after an error
FORBIDDEN_RETRY_SECONDS = 10.0  # after a 403: permissions change rarely
READ_BYTES = 65536

FORBIDDEN = "the operator may not read pods/log: grant get on pods/log"
NOT_STARTED = "the PostgreSQL pod's log is not followed yet"

_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp_ns(text: str) -> int | None:
    """The kubelet's RFC 3339 timestamp (nanoseconds, trailing zeros dropped) as nanoseconds since the
    epoch; None when ``text`` is not one. Integers, because two strings of different precision do not
    compare as times."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    zone = "+00:00" if match[3] == "Z" else match[3]
    try:
        moment = dt.datetime.fromisoformat(match[1] + zone)
    except ValueError:
        return None
    seconds = (moment - _EPOCH) // dt.timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((match[2] or "").ljust(9, "0"))


@dataclass(frozen=True)
class Container:
    """One run of the container: a restart is a new one (same pod, restart count + 1)."""

    pod_uid: str
    restarts: int


@dataclass
class Position:
    """How far one container's log has been handed over: the last line's timestamp and how many lines
    with exactly that timestamp (the next stream's overlap is skipped up to there)."""

    container: Container
    last_ns: int | None = None
    at_last: int = 0

    def since_seconds(self, now: float) -> int | None:
        if self.last_ns is None:
            return None
        return max(1, math.ceil(now - self.last_ns / 1e9)) + OVERLAP_SECONDS


class OverlapMissing(Exception):
    """A resumed stream starts after the last line handed over: what lies between was not sent."""


class Overlap:
    """Skips a resumed stream's lines up to ``position`` (the last line handed over, and as many lines
    before it with the same timestamp as were handed over); every line after that passes."""

    def __init__(self, position: Position):
        self.last_ns = position.last_ns
        self.at_last = position.at_last
        self.seen_at_last = 0

    def new(self, ns: int) -> bool:
        """Whether the line stamped ``ns`` is new. Raises OverlapMissing when the stream starts past
        the last line handed over (what lies between was not sent)."""
        if self.last_ns is None:
            return True
        if ns < self.last_ns:
            return False
        if ns == self.last_ns:
            self.seen_at_last += 1
            if self.seen_at_last <= self.at_last:
                return False
        elif self.seen_at_last < self.at_last:
            raise OverlapMissing()
        self.last_ns = None  # past the overlap
        return True

    def confirmed(self) -> bool:
        """Whether the stream reached back to the last line handed over (or needed not to)."""
        return self.last_ns is None or self.seen_at_last >= self.at_last


class PodLogSource:
    """Follows container ``container`` of pod ``pod`` in ``namespace`` from the moment it is built.

    ``core``: a ``kubernetes.client.CoreV1Api`` (read_namespaced_pod, read_namespaced_pod_log)."""

    def __init__(self, core: Any, namespace: str, pod: str, container: str):
        self.core = core
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._reason: str | None = NOT_STARTED
        self._gap: str | None = None  # lines of the current container were lost: holds until a new one
        self._stopped = threading.Event()
        self._settled = threading.Event()  # the first attempt is over: following, or a reason why not
        self._response: Any = None
        self._lock = threading.Lock()
        self._position: Position | None = None
        self._thread = threading.Thread(target=self._run, name=f"podlog-{pod}", daemon=True)
        self._thread.start()

    # -- LogSource ------------------------------------------------------------------------------
    def read_lines(self) -> list[str]:
        lines: list[str] = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def unavailable(self) -> str | None:
        return self._gap or self._reason

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            _interrupt(response)
        self._thread.join(timeout=5)

    def wait_settled(self, timeout: float) -> str | None:
        """Until the first attempt is over (or ``timeout``), then ``unavailable()``: the platform starts
        its first step knowing whether the log is read, rather than racing the thread's first request."""
        self._settled.wait(timeout)
        return self.unavailable()

    # -- the follower thread ----------------------------------------------------------------------
    def _say(self, reason: str | None) -> None:
        if reason != self._reason:
            if reason is None:
                log.info("following the log of pod %s/%s", self.namespace, self.pod)
            else:
                log.warning("cannot follow the log of pod %s/%s: %s", self.namespace, self.pod, reason)
        self._reason = reason
        self._settled.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                pause = self._follow_once()
            except Exception as err:  # noqa: BLE001 - the thread must outlive any one failure; the reason says it
                self._say(f"reading the PostgreSQL pod's log failed: {err!r}")
                pause = RETRY_SECONDS
            if pause:
                self._stopped.wait(pause)

    def _current(self) -> tuple[Container | None, str | None]:
        """The container running now, or None with why not."""
        try:
            pod = self.core.read_namespaced_pod(self.pod, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None, f"the PostgreSQL pod {self.namespace}/{self.pod} is gone"
            raise
        status = pod.status
        for cs in (status.container_statuses or []) if status else []:
            if cs.name == self.container and cs.state is not None and cs.state.running is not None:
                return Container(pod.metadata.uid, cs.restart_count or 0), None
        return None, f"the PostgreSQL container of pod {self.namespace}/{self.pod} is not running"

    def _follow_once(self) -> float:
        """One look at the pod and, when its container runs, one stream to its end. Returns how long to
        wait before the next."""
        current, why = self._current()
        if current is None:
            self._say(why)
            return WAIT_SECONDS
        position = self._position
        if position is None or position.container != current:
            if position is not None:
                self._finish_previous(position, current)
            self._position = position = Position(current)
            self._gap = None  # a new server: its log starts here, whatever the old one's lost
        try:
            return self._stream(position, follow=True)
        except ApiException as err:
            return self._refused(err)

    def _finish_previous(self, position: Position, current: Container) -> None:
        """The rest of the container followed until now, read to its end after it restarted. Only the
        container just before ``current`` can be read; an older one's end is lost with it."""
        if position.container.pod_uid != current.pod_uid or position.container.restarts + 1 != current.restarts:
            return
        try:
            self._stream(position, follow=False, previous=True)
        except ApiException as err:
            log.info("the previous PostgreSQL container's log could not be read to its end: %s", _message(err))

    def _refused(self, err: ApiException) -> float:
        if err.status == 403:
            self._say(FORBIDDEN)
            return FORBIDDEN_RETRY_SECONDS
        if err.status == 404:
            self._say(f"the PostgreSQL pod {self.namespace}/{self.pod} is gone")
            return WAIT_SECONDS
        if err.status == 400:  # the container is between runs: "waiting to start", "terminated"
            self._say(f"the PostgreSQL pod's log is not served yet: {_message(err)}")
            return WAIT_SECONDS
        self._say(f"the PostgreSQL pod's log is not served (no kubelet gave it to the API server): {_message(err)}")
        return RETRY_SECONDS

    def _stream(self, position: Position, *, follow: bool, previous: bool = False) -> float:
        """Read one stream of ``position``'s container, handing over each new complete line. A stream
        that does not reach back to the last line handed over is read again whole, once. Returns the
        pause before the next look: none after new lines, a short one after a stream with none (a
        container that just exited still shows as running for a moment)."""
        since = position.since_seconds(time.time())
        while True:
            try:
                return 0.0 if self._read(position, follow=follow, previous=previous, since=since) else WAIT_SECONDS
            except OverlapMissing:
                if since is None:
                    self._gap = (
                        "lines of the PostgreSQL pod's log were lost (rotated away before they were read);"
                        " the log counts again from the server's next start"
                    )
                    log.warning("%s", self._gap)
                    position.last_ns, position.at_last = None, 0  # hand over what follows
                    return 0.0
                since = None

    def _read(self, position: Position, *, follow: bool, previous: bool, since: int | None) -> int:
        """One request; returns how many new lines it handed over."""
        kwargs: dict[str, Any] = {"container": self.container, "timestamps": True}
        if follow:
            kwargs["follow"] = True
        if previous:
            kwargs["previous"] = True
        if since is not None:
            kwargs["since_seconds"] = since
        response = self.core.read_namespaced_pod_log(
            self.pod,
            self.namespace,
            _preload_content=False,
            _request_timeout=(CONNECT_SECONDS, IDLE_READ_SECONDS),
            **kwargs,
        )
        with self._lock:
            if self._stopped.is_set():
                response.close()
                return 0
            self._response = response
        if follow:
            self._say(None)
        overlap = Overlap(position)
        pending = b""
        handed = 0
        try:
            while not self._stopped.is_set():
                try:
                    chunk = response.read1(READ_BYTES)
                except Exception:  # noqa: BLE001 - a read timeout, a reset, close(): the stream is over
                    break
                if not chunk:
                    break  # the partial line left in ``pending`` comes again whole on the next stream
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    handed += self._hand_over(raw, position, overlap)
            if not overlap.confirmed() and not self._stopped.is_set():
                raise OverlapMissing()  # nothing reached back to the last line: skew or rotation, see which
        finally:
            with self._lock:
                if self._response is response:
                    self._response = None
            response.close()  # never back to the pool half read
        return handed

    def _hand_over(self, raw: bytes, position: Position, overlap: Overlap) -> int:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        stamp, _, text = line.partition(" ")
        ns = timestamp_ns(stamp)
        if ns is None:  # not the kubelet's form: never happens with timestamps; pass it on unskipped
            self._lines.put(line)
            return 1
        if not overlap.new(ns):
            return 0
        if ns == position.last_ns:
            position.at_last += 1
        else:
            position.last_ns, position.at_last = ns, 1
        self._lines.put(text)
        return 1


def _message(err: ApiException) -> str:
    """The API server's own message of an error (its Status body), on one line."""
    try:
        message = str(json.loads(err.body or "").get("message") or "")
    except (ValueError, AttributeError):
        message = str(err.body or "")
    return " ".join((message or f"{err.status} {err.reason}").split())


def _interrupt(response: Any) -> None:
    """Wake the thread blocked reading ``response`` (a shutdown of the socket's read side)."""
    with contextlib.suppress(Exception):  # an older urllib3, a released connection: closing is enough
        response.shutdown()
    with contextlib.suppress(Exception):
        response.close()
