"""The server's own account of its connections: what poolbench sets so PostgreSQL logs each client
backend's start, refusal and end, and the source of those lines (pure: the platforms bring the lines).

Sampling ``pg_stat_activity`` misses what happens between two reads; the log does not. Every server
poolbench creates (the embedded one, the cluster's StatefulSet) runs with ``SERVER_LOG_SETTINGS``; a
user's own settings may not change them (``spec.FORBIDDEN_SETTINGS`` includes them), because the parse
depends on each one: the prefix carries the time, the PID and the backend type of every line, and the
messages must be the server's English ones.
"""

from __future__ import annotations

from typing import Protocol

#: Every line starts with: the time as a Unix epoch with milliseconds, the PID, the backend type and
#: the SQLSTATE; then the severity and the message (``LOG:  connection authorized: ...``).
LOG_LINE_PREFIX = "%n [%p] %b %e "

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
