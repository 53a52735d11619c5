"""Reading the server's connection log for P5: a follower of the log file and the timeline it feeds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: ``%n [%p] %b %e `` then the severity: epoch seconds with milliseconds, PID, backend type, SQLSTATE.
LINE_RE = re.compile(r"^(\d+\.\d+) \[(\d+)\] (.+?) ([0-9A-Z]{5}) ([A-Z]+):  (.*)$")


class LogFollower:
    """The server's log file, read from where the last call stopped; only complete lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return data[:cut].decode(errors="replace").splitlines()

    def unavailable(self) -> str | None:
        return None if self.path.exists() else f"{self.path} does not exist"

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Event:
    t: float  # the server's own time of the line (epoch seconds)
    kind: str  # "connect" | "disconnect" | "refusal"
    pid: int
    app: str = ""


class TimelineReader:
    """The client backends open over time, from the log's lines (connect = ``connection authorized``)."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}
        self.peak = 0
        self.peak_at = 0.0
        self.refusals = 0

    def feed(self, lines: list[str]) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            m = LINE_RE.match(line)
            if not m:
                continue
            t, pid, _backend, sqlstate, severity, message = m.groups()
            if message.startswith("connection authorized: "):
                app = message.split(" application_name=", 1)[1] if " application_name=" in message else ""
                event = Event(float(t), "connect", int(pid), app)
                self.open[event.pid] = app
                if len(self.open) > self.peak:
                    self.peak, self.peak_at = len(self.open), event.t
            elif message.startswith("disconnection: "):
                event = Event(float(t), "disconnect", int(pid), self.open.pop(int(pid), ""))
            elif severity == "FATAL" and sqlstate == "53300":
                self.refusals += 1
                event = Event(float(t), "refusal", int(pid))
            else:
                continue
            events.append(event)
        return events

    def open_count(self) -> int:
        return len(self.open)
