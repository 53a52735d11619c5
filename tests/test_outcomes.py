"""Error classification by message (pure)."""

import pytest

from poolbench.core.outcomes import classify_exception, classify_message


def test_messages() -> None:
    assert classify_message("FATAL:  sorry, too many clients already") == "tooManyClients"
    assert (
        classify_message("FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute")
        == "reservedSlots"
    )
    assert classify_message("QueuePool limit of size 5 overflow 10 reached, connection timed out") == "poolTimeout"
    assert classify_message("syntax error") == "other"


def test_cause_chain_is_walked() -> None:
    inner = RuntimeError("FATAL: sorry, too many clients already")
    try:
        try:
            raise inner
        except RuntimeError as e:
            raise ValueError("wrapped") from e
    except ValueError as outer:
        assert classify_exception(outer) == "tooManyClients"


class TooManyConnectionsError(Exception):
    """Named like asyncpg's: SQLSTATE 53300 by its type."""


def test_slot_errors_by_type_or_sqlstate_when_the_text_says_nothing() -> None:
    assert classify_exception(TooManyConnectionsError("")) == "tooManyClients"
    coded = RuntimeError("connection failed")
    coded.sqlstate = "53300"  # type: ignore[attr-defined]
    assert classify_exception(coded) == "tooManyClients"
    assert classify_exception(coded, pooled=True) == "poolerServerLogin"
    assert classify_exception(RuntimeError("connection failed")) == "other"


@pytest.mark.parametrize(
    "text",
    [
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",  # PG 16+
        'FATAL:  remaining connection slots are reserved for roles with privileges of the "pg_use_reserved_connections"'
        " role",
        "FATAL: remaining connection slots are reserved for non-replication superuser and rds_superuser connections",
    ],
)
def test_newer_reserved_slot_texts(text: str) -> None:
    assert classify_message(text) == "reservedSlots"
