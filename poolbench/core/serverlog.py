"""The server's own account of its connections: what poolbench sets so PostgreSQL logs each client
backend's start, refusal and end, and the source of those lines (pure: the platforms bring the lines).

Sampling ``pg_stat_activity`` misses what happens between two reads; the log does not. Every server
poolbench creates (the embedded one, the cluster's StatefulSet) runs with ``SERVER_LOG_SETTINGS``; a
user's own settings may not change them (``spec.FORBIDDEN_SETTINGS`` includes them), because the parse
depends on each one: the prefix carries the time, the PID and the backend type of every line, and the
messages must be the server's English ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .outcomes import RESERVED_SLOTS, TOO_MANY_CLIENTS

#: Every line starts with: the time as a Unix epoch with milliseconds, the PID, the backend type and
#: the SQLSTATE; then the severity and the message (``LOG:  connection authorized: ...``).
LOG_LINE_PREFIX = "%n [%p] %b %e "

#: The application_name of poolbench's own sessions: the monitor's, and the admin sessions that check a
#: (re)started server is ready and set up the workload's role. No witness counts them as the workload's:
#: neither the log's account (``core.timeline``) nor the reads (``db.probe``), so the two count the same set.
MONITOR_NAME = "poolbench-monitor"
ADMIN_NAME = "poolbench-admin"
OWN_SESSION_NAMES = frozenset({MONITOR_NAME, ADMIN_NAME})

#: The settings every server poolbench creates runs with, passed as ``-c name=value``.
SERVER_LOG_SETTINGS: dict[str, str] = {
    "log_connections": "on",
    "log_disconnections": "on",
    "log_line_prefix": LOG_LINE_PREFIX,
    "lc_messages": "C",
    # A failed statement's text may span lines that look like ours: never log statements.
    "log_min_error_statement": "panic",
}


class LogSource(Protocol):
    """The server's log, read incrementally (a local file; a pod's log followed through the API)."""

    def read_lines(self) -> list[str]:
        """The complete lines written since the last call, oldest first; [] when none. Never blocks
        for long (a follower thread fills what this drains)."""
        ...

    def unavailable(self) -> str | None:
        """Why the log cannot be read (then poolbench reports sampled peaks only); None while it can."""
        ...

    def close(self) -> None:
        """Stop following."""
        ...


# -- reading the lines ---------------------------------------------------------------------------------

#: What a parsed line says about a connection (``LogEvent.kind``).
OPENED = "opened"  # a client backend's session was authorized: it holds a connection from now on
CLOSED = "closed"  # a client backend's session ended (its disconnection line)
ENDED = "ended"  # a session ended by a FATAL error (terminated, timed out, lost its client)
REFUSED = "refused"  # a connection attempt refused for want of a slot (SQLSTATE 53300)
FAILED = "failed"  # a connection attempt that failed its start-up for another reason (no such role…)
SERVER_ENDED = "serverEnded"  # the server ended every backend (a crash, a shutdown, a new postmaster)
MARKER = "marker"  # a line poolbench's monitor wrote itself, to know how far the log has been read

#: Refusal classes beyond the workload's own (``outcomes``): a role's or a database's CONNECTION LIMIT.
ROLE_CONNECTION_LIMIT = "roleConnectionLimit"
DATABASE_CONNECTION_LIMIT = "databaseConnectionLimit"

#: The message poolbench's monitor logs (``RAISE LOG``) to mark how far the log has been read.
MARKER_TEXT = "poolbench log marker "

CLIENT_BACKEND = "client backend"
#: FATAL errors a connection attempt meets during its start-up, after the server may already have
#: logged it as authorized: the session never opened. 53300 is a refusal for want of a slot;
#: classes 28 (no such role, may not log in), 3D (no such database), 42501 (no CONNECT privilege),
#: 55000 (the database does not allow connections), 57P03 (the server is starting or recovering).
STARTUP_SQLSTATES = frozenset({"53300", "28000", "28P01", "3D000", "42501", "55000", "57P03"})
TOO_MANY_CONNECTIONS = "53300"
#: The postmaster's lines after which no backend of the server it ran is left.
SERVER_END_MESSAGES = (
    "terminating any other active server processes",  # a backend crashed: every other one is told to quit
    "all server processes terminated; reinitializing",
    "database system is shut down",
    "received immediate shutdown request",
    "starting PostgreSQL",  # a new postmaster: whatever the log said of the old one's backends is over
    "database system is ready to accept connections",  # a (re)started server has no client backend yet
)
_AUTHORIZED = "connection authorized: user="
#: How the postmaster's lines that may end backends start (``SERVER_END_MESSAGES``, a child's exit).
_POSTMASTER_PREFIXES = (*SERVER_END_MESSAGES, "server process (PID ", "client backend (PID ")
_APP = " application_name="
_DATABASE = " database="
#: Suffixes the server appends to the authorized line after the application_name.
_SUFFIXES = (" SSL enabled (protocol=", " GSS (authenticated=")


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One line of the server's log that tells about a connection; ``at``: the server's epoch seconds."""

    kind: str
    at: float
    pid: int
    application_name: str = ""  # OPENED
    user: str = ""  # OPENED
    database: str = ""  # OPENED
    cause: str = ""  # REFUSED: the refusal class; ENDED, FAILED: the SQLSTATE; SERVER_ENDED: the message
    marker: str = ""  # MARKER: the token the monitor wrote


def refusal_class(message: str) -> str:
    """The class of a 53300 refusal from the server's wording (PostgreSQL 15 to 18)."""
    if message.startswith("too many connections for role"):
        return ROLE_CONNECTION_LIMIT
    if message.startswith("too many connections for database"):
        return DATABASE_CONNECTION_LIMIT
    if message.startswith("remaining connection slots are reserved"):
        return RESERVED_SLOTS  # "for non-replication superuser connections" (≤15), "for roles with …" (16+)
    return TOO_MANY_CLIENTS  # "sorry, too many clients already"


def _authorized(at: float, pid: int, body: str) -> LogEvent:
    """``user=U database=D[ application_name=A][ SSL enabled (…)][ GSS (…)]`` (body after ``user=``)."""
    app = ""
    cut = body.find(_APP)
    if cut >= 0:
        app = body[cut + len(_APP) :]
        body = body[:cut]
        for suffix in _SUFFIXES:
            at_suffix = app.rfind(suffix)
            if at_suffix >= 0 and app.endswith(")"):
                app = app[:at_suffix]
    else:
        for suffix in _SUFFIXES:
            at_suffix = body.find(suffix)
            if at_suffix >= 0:
                body = body[:at_suffix]
    user, _, database = body.partition(_DATABASE)
    return LogEvent(OPENED, at, pid, application_name=app, user=user, database=database)


def parse_line(line: str) -> LogEvent | None:
    """One line in ``LOG_LINE_PREFIX``'s format, or None when it tells nothing about a connection or is
    not such a line (a message's continuation, another format, a line cut mid-write). Most lines tell
    nothing (``connection received``, statements' errors…): the message is looked at before the prefix
    is parsed, so those cost two string searches."""
    split = line.find(":  ")  # the severity ends with a colon and two spaces before the message
    if split < 0:
        return None
    message = line[split + 3 :].rstrip("\r\n")
    if message[5:7] == ": " and message[:5].isalnum():
        message = message[7:]  # log_error_verbosity = verbose repeats the SQLSTATE before the message
    found = _kind(line, split, message)
    if found is None:
        return None
    kind, severity_at = found
    prefix = _prefix(line, severity_at)
    if prefix is None:
        return None
    at, pid, backend_type, sqlstate = prefix
    if kind == SERVER_ENDED:
        return _postmaster(at, pid, message) if backend_type == "postmaster" else None
    if kind == FAILED and sqlstate == TOO_MANY_CONNECTIONS:
        # Whatever the process is called yet ("client backend", a dead-end backend…): a refusal.
        return LogEvent(REFUSED, at, pid, cause=refusal_class(message))
    if backend_type != CLIENT_BACKEND:
        return None
    if kind == OPENED:
        return _authorized(at, pid, message[len(_AUTHORIZED) :])
    if kind == MARKER:
        return LogEvent(MARKER, at, pid, marker=message[len(MARKER_TEXT) :].strip())
    if kind == CLOSED:
        return LogEvent(CLOSED, at, pid)
    if kind == FAILED and sqlstate not in STARTUP_SQLSTATES:
        kind = ENDED  # a session's FATAL error: terminated, timed out, lost its client
    return LogEvent(kind, at, pid, cause=sqlstate)


def _kind(line: str, split: int, message: str) -> tuple[str, int] | None:
    """What the line may say, from its severity and message alone, and where its severity starts."""
    if line.endswith(" LOG", 0, split):
        if message.startswith(_AUTHORIZED):
            return OPENED, split - 4
        if message.startswith("disconnection: "):
            return CLOSED, split - 4
        if message.startswith(MARKER_TEXT):
            return MARKER, split - 4
        if message.startswith(_POSTMASTER_PREFIXES):
            return SERVER_ENDED, split - 4
        return None
    if line.endswith(" FATAL", 0, split):
        return FAILED, split - 6
    if line.endswith(" PANIC", 0, split):
        return ENDED, split - 6
    return None


def _postmaster(at: float, pid: int, message: str) -> LogEvent | None:
    for text in SERVER_END_MESSAGES:
        if message.startswith(text):
            return LogEvent(SERVER_ENDED, at, pid, cause=text)
    return _child_exit(at, message)


def _prefix(line: str, severity_at: int) -> tuple[float, int, str, str] | None:
    """``time [pid] backend type SQLSTATE`` before the severity (which starts at ``severity_at``)."""
    space = line.find(" [", 0, severity_at)
    close = line.find("] ", space + 2, severity_at)
    if space <= 0 or close < 0:
        return None
    state_at = line.rfind(" ", close + 1, severity_at)
    if state_at <= close + 1:
        return None
    try:
        return (
            float(line[:space]),
            int(line[space + 2 : close]),
            line[close + 2 : state_at],
            line[state_at + 1 : severity_at],
        )
    except ValueError:
        return None


def _child_exit(at: float, message: str) -> LogEvent | None:
    """``server process (PID n) was terminated by signal 9`` (15), ``client backend (PID n) exited with
    exit code 1`` (18): that backend is gone without a disconnection line."""
    start = message.find("(PID ")
    if start < 0 or not (" was terminated by " in message or " exited with " in message):
        return None
    end = message.find(")", start)
    try:
        pid = int(message[start + 5 : end])
    except ValueError:
        return None
    return LogEvent(ENDED, at, pid, cause="exited")
