"""The database drivers a replica can run its engine on (the spec's ``workload.driver``)."""

from __future__ import annotations

from typing import Literal, get_args

Driver = Literal["psycopg2", "psycopg", "asyncpg"]
DRIVERS: tuple[Driver, ...] = get_args(Driver)
#: The driver of a replica whose environment names none.
DEFAULT_DRIVER: Driver = "psycopg2"
#: The one driver with an asyncio engine (``create_async_engine``): its callers are tasks, not threads.
ASYNC_DRIVER: Driver = "asyncpg"

#: SQLAlchemy's URL for each driver (the connection target comes from libpq's PG* variables).
SQLALCHEMY_URLS: dict[Driver, str] = {
    "psycopg2": "postgresql+psycopg2://",
    "psycopg": "postgresql+psycopg://",
    "asyncpg": "postgresql+asyncpg://",
}
#: What each driver imports beyond the base install (the ``drivers`` extra).
EXTRA_MODULES: dict[Driver, tuple[str, ...]] = {
    "psycopg2": (),
    "psycopg": ("psycopg",),
    "asyncpg": ("asyncpg", "greenlet"),
}


def known_driver(name: str) -> Driver:
    """``name`` as a Driver; ValueError naming the drivers when it is none of them."""
    for driver in DRIVERS:
        if name == driver:
            return driver
    raise ValueError(f"{name!r} is not one of {', '.join(DRIVERS)}")
