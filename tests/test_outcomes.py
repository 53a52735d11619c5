"""Error classification by message (pure)."""

from poolbench.core.outcomes import classify_exception, classify_message


def test_messages():
    assert classify_message("FATAL:  sorry, too many clients already") == "tooManyClients"
    assert classify_message(
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute") == "reservedSlots"
    assert classify_message("QueuePool limit of size 5 overflow 10 reached, connection timed out") == "poolTimeout"
    assert classify_message("syntax error") == "other"


def test_cause_chain_is_walked():
    inner = RuntimeError("FATAL: sorry, too many clients already")
    try:
        try:
            raise inner
        except RuntimeError as e:
            raise ValueError("wrapped") from e
    except ValueError as outer:
        assert classify_exception(outer) == "tooManyClients"
