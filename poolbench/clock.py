"""The wall clock, read at the edges (the CLI's local runner, the operator) and passed into the pure
core, which stamps the status with it but never reads it itself."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, as the status's timestamps are written: RFC 3339 in UTC to the second ('…Z')."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
