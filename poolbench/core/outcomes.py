"""Classify one attempt's outcome from the exception it raised.

psycopg2 raises connection-slot errors at connect time with ``pgcode`` None, so the class comes
from the server's message text (PostgreSQL src/backend/utils/init/postinit.c). Pure: no imports
of drivers, it only reads the exception chain.
"""

from __future__ import annotations

TOO_MANY_CLIENTS = "tooManyClients"
RESERVED_SLOTS = "reservedSlots"
POOL_TIMEOUT = "poolTimeout"
OTHER = "other"
OK = "ok"
OUTCOMES = (OK, TOO_MANY_CLIENTS, RESERVED_SLOTS, POOL_TIMEOUT, OTHER)


def classify_message(message: str) -> str:
    text = message.lower()
    if "sorry, too many clients already" in text:
        return TOO_MANY_CLIENTS
    if "remaining connection slots are reserved" in text:
        return RESERVED_SLOTS
    if "queuepool limit of size" in text or "3o7r" in text:
        return POOL_TIMEOUT
    return OTHER


def classify_exception(exc: BaseException) -> str:
    """Walk the cause chain (SQLAlchemy wraps the DB-API error) and classify."""
    seen: set[int] = set()
    node: BaseException | None = exc
    best = OTHER
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if getattr(node, "code", None) == "3o7r":
            return POOL_TIMEOUT
        found = classify_message(str(node))
        if found != OTHER:
            return found
        node = node.__cause__ or node.__context__
    return best


def short_message(exc: BaseException, limit: int = 200) -> str:
    """First line of the innermost message: what a person wants to read in a status field."""
    node = exc
    while node.__cause__ is not None:
        node = node.__cause__
    text = " ".join(str(node).split())
    return text[:limit]
