"""The statuses of docs/guides/gitops.md's table, built by the core's own status code (``BenchmarkRun``,
``invalid_status``: what the operator patches), and the table itself, read from the page: the page is
the one place each case's conditions and kstatus result are written down, and the tests read them there.
``kstatus`` runs the real library over objects (hack/kstatus, built by hack/build-kstatus.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poolbench.core.benchmark import BenchmarkRun, ReplicaReport, invalid_status
from poolbench.core.results import BenchmarkStatus
from poolbench.core.sampling import Sample
from poolbench.core.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guides" / "gitops.md"

#: A spec the CRD's schema accepts and the core refuses: a pool class without overflow, given some.
CONTRADICTION: dict[str, object] = {"steps": [1], "workload": {"engine": {"poolClass": "NullPool", "maxOverflow": 3}}}

#: The cases built here from the core alone.
CORE_CASES = ("passed", "boundary", "step-failed", "inconclusive", "invalid-spec", "environment-failed", "running")
#: A passed benchmark edited afterwards, through an API server (tests/k8s/test_kstatus_k8s.py).
API_CASES = ("spec-edited", "labels-edited")
#: A passing run's status as the CLI writes it into its JSON: no resource, so no generation.
CLI_CASES = ("cli-output",)


def ticking_clock() -> Callable[[], str]:
    """A clock one second further at each read, so every status is the same on every run."""
    seconds = iter(range(10**6))
    return lambda: f"2026-01-01T00:{(s := next(seconds)) // 60 % 60:02d}:{s % 60:02d}Z"


def gitops_table() -> dict[str, dict[str, str]]:
    """The page's table: case → column → cell (backticks dropped)."""
    lines = [line for line in PAGE.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if set("".join(cells)) <= {"-", " "}:
            continue
        row = dict(zip(header, cells, strict=True))
        rows[row["case"].strip("`")] = row
    return rows


def conditions_cells(status: BenchmarkStatus) -> dict[str, str]:
    """A status as the table writes it: its phase, and each condition as "Status Reason"."""
    cells: dict[str, str] = {"phase": status.phase}
    cells.update({c.type: f"{c.status} {c.reason}" for c in status.conditions})
    return cells


def _seen(run: BenchmarkRun) -> None:
    """The monitor read the step (a step it never read is Inconclusive)."""
    for i in range(5):
        run.add_sample(Sample(t=float(i), total=1, by_state={"active": 1}))


def _run(spec: dict[str, object], generation: int | None, fits: Callable[[int], bool | None]) -> BenchmarkRun:
    """A benchmark run through every step it plans: a step passes where ``fits(replicas)`` is True,
    fails with refused connections where it is False, and is never read by the monitor where it is None."""
    run = BenchmarkRun(parse_spec(spec), clock=ticking_clock())
    run.status.observed_generation = generation
    run.provisioning()
    while (planned := run.next_step()) is not None:
        run.begin_step(planned)
        verdict = fits(planned.replicas)
        if verdict is not None:
            _seen(run)
        refused = ReplicaReport(
            "r0",
            outcomes={"tooManyClients": 1},
            crashed=True,
            first_error="too many clients",
            first_error_class="tooManyClients",
        )
        run.finish_step([refused] if verdict is False else [ReplicaReport("r0", outcomes={"ok": 10})])
    run.finish()
    return run


def _running(generation: int | None) -> BenchmarkStatus:
    run = BenchmarkRun(parse_spec({"steps": [1, 2]}), clock=ticking_clock())
    run.status.observed_generation = generation
    run.provisioning()
    planned = run.next_step()
    assert planned is not None
    run.begin_step(planned)
    _seen(run)
    return run.status


def _environment_failed(generation: int | None) -> BenchmarkStatus:
    run = BenchmarkRun(parse_spec({"steps": [1, 2]}), clock=ticking_clock())
    run.status.observed_generation = generation
    run.provisioning()
    return run.fail("OperationalError: connection to server failed: Connection refused")


def _invalid(generation: int | None) -> BenchmarkStatus:
    try:
        parse_spec(CONTRADICTION)
    except SpecError as err:
        return invalid_status(err.message(), generation, ticking_clock()())
    raise AssertionError("the contradiction parsed: pick another one the schema cannot refuse")


#: Each measured case: the spec it runs, and whether a step of so many replicas fits (None: never read).
MEASURED: dict[str, tuple[dict[str, object], Callable[[int], bool | None]]] = {
    "passed": ({"steps": [1, 2]}, lambda replicas: True),
    "boundary": ({"steps": {"search": {"min": 1, "max": 8}}}, lambda replicas: replicas <= 3),
    "step-failed": ({"steps": [1, 2]}, lambda replicas: replicas < 2),
    "inconclusive": ({"steps": [1, 2]}, lambda replicas: None if replicas == 2 else True),
}


def core_status(case: str, generation: int | None) -> BenchmarkStatus:
    """The status the core writes for one of ``CORE_CASES``, observing ``generation``."""
    if case in MEASURED:
        spec, fits = MEASURED[case]
        return _run(spec, generation, fits).status
    if case == "invalid-spec":
        return _invalid(generation)
    if case == "environment-failed":
        return _environment_failed(generation)
    if case == "running":
        return _running(generation)
    raise KeyError(case)


def spec_of(case: str) -> dict[str, object]:
    """The spec a case's resource is created with."""
    if case == "invalid-spec":
        return CONTRADICTION
    return MEASURED[case][0] if case in MEASURED else {"steps": [1, 2]}


def kstatus(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each object's kstatus result (status and message, or the library's error), by name."""
    binary = os.environ.get("POOLBENCH_KSTATUS")
    if not binary:
        pytest.fail("POOLBENCH_KSTATUS is unset: hack/build-kstatus.sh builds it", pytrace=False)
    stdin = "\n".join(json.dumps(obj) for obj in objects)  # JSON: no YAML reading of timestamps or numbers
    proc = subprocess.run([binary], input=stdin, capture_output=True, text=True, timeout=60, check=True)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    return {r["name"]: r for r in results}
