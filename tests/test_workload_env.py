"""``python -m workload`` outside poolbench: a clear error naming the setting, never a silent spin."""

from __future__ import annotations

import subprocess
import sys

import pytest

from poolbench.core.contracts.replica_env import WorkloadConfig, WorkloadEnvError
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "POOLBENCH_ITERATIONS nor POOLBENCH_DURATION_SECONDS"),
        ({"POOLBENCH_ITERATIONS": "x"}, "POOLBENCH_ITERATIONS is malformed"),
        ({"POOLBENCH_DURATION_SECONDS": "soon"}, "POOLBENCH_DURATION_SECONDS is malformed"),
        ({"POOLBENCH_ITERATIONS": "3", "POOLBENCH_THREADS": "many"}, "POOLBENCH_THREADS is malformed"),
        ({"POOLBENCH_ITERATIONS": "3", "POOLBENCH_ENGINE": "{"}, "POOLBENCH_ENGINE is malformed"),
    ],
)
def test_a_bad_environment_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(WorkloadEnvError, match=named):
        WorkloadConfig.checked_from_env(env)


def test_bare_python_m_workload_exits_with_the_reason() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workload"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("poolbench workload: neither POOLBENCH_ITERATIONS nor POOLBENCH_DURATION_SECONDS")
    assert "Traceback" not in proc.stderr
