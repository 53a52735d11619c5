"""The wall clock, read at the edges (the CLI's local runner, the operator) and passed into the pure
core, which stamps the status with it but never reads it itself."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, as the status's timestamps are written: RFC 3339 in UTC to the second ('…Z')."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def seconds_since(timestamp: str | None) -> float | None:
    """Seconds from a status timestamp (as ``utc_now`` writes it) to now; None without one, or with one
    that is not a time with its zone."""
    try:
        began = datetime.fromisoformat(timestamp) if timestamp else None
    except ValueError:
        return None
    if began is None or began.tzinfo is None:
        return None
    return max(0.0, (datetime.now(UTC) - began).total_seconds())
