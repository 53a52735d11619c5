"""What `poolbench run` refuses before it starts anything, and how it reports what it cannot help.

No server runs here: every refusal below happens before PostgreSQL would start (exit 2 with the
field or flag named, no traceback); the local runner is replaced where a run must "happen".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench import cli
from poolbench.core.capacity import Machine, local_capacity_problems
from poolbench.core.results import BenchmarkStatus
from poolbench.core.spec import SpecError, load_text, parse_spec
from poolbench.local import runner
from poolbench.local.embedded import EnvironmentFailure
from tests.conftest import make_doc


def write(tmp_path: Path, doc: dict[str, Any], name: str = "b.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


class RunStarted(BaseException):
    """Raised by the stand-in runner; a BaseException, so the CLI's catch-all lets it through."""


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the local runner: a refusal must come before it is ever called."""
    calls: list[str] = []

    def fake_run(bench: Any, progress: Any = None) -> runner.LocalResult:
        calls.append(bench.name)
        raise RunStarted()

    monkeypatch.setattr(runner, "run_local", fake_run)
    return calls


@pytest.mark.parametrize("case", ["missing-dir", "is-input", "is-dir", "same-as-plot", "empty"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, no_run: list[str], capsys: pytest.CaptureFixture[str], case: str
) -> None:
    spec = write(tmp_path, make_doc(steps=[1]))
    output = {
        "missing-dir": str(tmp_path / "nope" / "r.json"),
        "is-input": str(spec),
        "is-dir": str(tmp_path),
        "same-as-plot": str(tmp_path / "x.png"),
        "empty": " ",
    }[case]
    argv = ["run", str(spec), "--output", output]
    if case == "same-as-plot":
        argv += ["--plot", output]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--output" in err
    assert "Traceback" not in err
    assert no_run == []
    assert spec.read_text().startswith("apiVersion")  # the input is untouched


@pytest.mark.parametrize("case", ["is-input", "is-dir", "same-as-output", "missing-dir"])
def test_a_report_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, no_run: list[str], capsys: pytest.CaptureFixture[str], case: str
) -> None:
    spec = write(tmp_path, make_doc(steps=[1]))
    report = {
        "is-input": str(spec),
        "is-dir": str(tmp_path),
        "same-as-output": str(tmp_path / "r.json"),
        "missing-dir": str(tmp_path / "nope" / "r.html"),
    }[case]
    argv = ["run", str(spec), "--report", report]
    if case == "same-as-output":
        argv += ["--output", report]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert ("--output" if case == "same-as-output" else "--report") in err
    assert "Traceback" not in err
    assert no_run == []
    assert spec.read_text().startswith("apiVersion")


def test_an_unwritable_plot_is_refused_before_the_run(
    tmp_path: Path, no_run: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        target = "/proc/poolbench.png"  # even root cannot create files there
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "p.png")
    assert cli.main(["run", str(write(tmp_path, make_doc(steps=[1]))), "--plot", target]) == 2
    assert "--plot" in capsys.readouterr().err
    assert no_run == []


def test_a_plan_too_large_for_the_machine_is_refused_unless_allowed(
    tmp_path: Path, no_run: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = make_doc(steps=[2, 500], workload={"threads": 500, "holdSeconds": 1}, postgres={"maxConnections": 10000})
    path = write(tmp_path, doc)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.steps[1]" in err
    assert "--allow-large" in err
    assert no_run == []
    with pytest.raises(RunStarted):
        cli.main(["run", str(path), "--allow-large"])
    assert no_run == ["t"]


def test_capacity_arithmetic() -> None:
    spec = parse_spec(
        {"steps": [10, 50], "workload": {"threads": 20, "holdSeconds": 1}, "postgres": {"maxConnections": 2000}}
    )
    assert local_capacity_problems(spec, Machine(cores=2, memory_bytes=24 * 2**30)) == []
    small = local_capacity_problems(spec, Machine(cores=2, memory_bytes=2 * 2**30))
    assert [p for p, _ in small] == ["spec.steps[1]"]
    assert "50 replicas need about" in small[0][1]
    many = parse_spec({"steps": [300], "workload": {"threads": 1, "holdSeconds": 1}})
    assert local_capacity_problems(many, Machine(cores=2, memory_bytes=64 * 2**30)) == []
    one_core = local_capacity_problems(many, Machine(cores=1, memory_bytes=64 * 2**30))
    assert one_core == [("spec.steps[0]", "300 replica processes are more than 200 on 1 cores")]


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (make_doc(workload={"holdSeconds": 400}), "spec.workload.holdSeconds"),
        (
            make_doc(stepTimeoutSeconds=10, workload={"durationSeconds": 8, "holdSeconds": 2}),
            "spec.workload.holdSeconds",
        ),
        (
            make_doc(postgres={"maxConnections": 4, "superuserReservedConnections": 3}, workload={"role": "app"}),
            "spec.postgres.maxConnections",
        ),
        (
            make_doc(postgres={"maxConnections": 2, "superuserReservedConnections": 1}, workload={"role": "app"}),
            "spec.postgres.maxConnections",
        ),
        (make_doc(workload={"statement": "SELECT 1\x00; DROP TABLE x"}), "spec.workload.statement"),
        (make_doc(postgres={"settings": {"work_mem": "4MB\x00"}}), "spec.postgres.settings"),
        (make_doc(postgres={"settings": {"lc_messages": "de_DE"}}), "spec.postgres.settings"),
    ],
)
def test_contradictions_are_refused_by_field(
    doc: dict[str, Any], path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", str(write(tmp_path, doc))]) == 2
    err = capsys.readouterr().err
    assert path in err
    assert "Traceback" not in err


def test_a_plan_that_can_pass_is_not_refused() -> None:
    # Exactly one usable slot is enough; hold just under the timeout is allowed.
    doc = make_doc(
        postgres={"maxConnections": 5, "superuserReservedConnections": 3},
        stepTimeoutSeconds=10,
        workload={"role": "app", "holdSeconds": 9.5},
    )
    load_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: poolbench.dev/v1alpha1\nkind: PoolBenchmark\nmetadata: {name: a}\n"
        "spec:\n  steps: [1]\n  steps: [9]\n",
        "apiVersion: poolbench.dev/v1alpha1\nkind: PoolBenchmark\nmetadata: {name: a, name: b}\nspec: {steps: [1]}\n",
        "apiVersion: poolbench.dev/v1alpha1\nkind: PoolBenchmark\nmetadata: {name: a}\n"
        "spec: {steps: [1], postgres: {settings: {work_mem: 4MB, work_mem: 8MB}}}\n",
    ],
)
def test_a_key_given_twice_is_refused_with_its_path(text: str) -> None:
    with pytest.raises(SpecError) as err:
        load_text(text)
    assert "duplicate key" in err.value.message()
    assert any(path.count(".") >= 1 for path, _ in err.value.problems)


def test_an_environment_failure_is_one_unwrapped_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = 'postgres exited at start: FATAL:  could not bind IPv4 address "127.0.0.1": ' + "x" * 200 + " [1]"

    def failing(bench: Any, progress: Any = None) -> runner.LocalResult:
        raise EnvironmentFailure(reason)

    monkeypatch.setattr(runner, "run_local", failing)
    assert cli.main(["run", str(write(tmp_path, make_doc(steps=[1])))]) == 1
    err = capsys.readouterr().err
    assert any(reason in line for line in err.splitlines())  # one line, brackets kept, not wrapped


def test_an_unforeseen_error_is_one_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(bench: Any, progress: Any = None) -> runner.LocalResult:
        raise ValueError("something nobody foresaw")

    monkeypatch.setattr(runner, "run_local", broken)
    monkeypatch.delenv("POOLBENCH_DEBUG", raising=False)
    assert cli.main(["run", str(write(tmp_path, make_doc(steps=[1])))]) == 1
    err = capsys.readouterr().err
    assert "unexpected error: ValueError: something nobody foresaw" in err
    assert "Traceback" not in err


def test_results_that_cannot_be_written_at_the_end_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, make_doc(steps=[1]))
    out = tmp_path / "out"
    out.mkdir()

    def finished(bench: Any, progress: Any = None) -> runner.LocalResult:
        out.rmdir()  # the output's directory disappears during the run
        return runner.LocalResult(status=BenchmarkStatus(phase="Completed", max_connections=100))

    monkeypatch.setattr(runner, "run_local", finished)
    assert cli.main(["run", str(spec), "--output", str(out / "r.json")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    kept = err.split("they are in ")[1].split()[0]
    assert Path(kept).is_file()
    assert '"phase": "Completed"' in Path(kept).read_text()
    Path(kept).unlink()


def test_version_and_plain_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "poolbench 0.1.0"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    assert "``" not in help_text
    assert "[/" not in help_text
    assert "Exit codes" in help_text


def test_a_pooled_variant_without_pgbouncer_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before anything starts: exit 1, one line naming the package, no traceback."""
    monkeypatch.delenv("POOLBENCH_PGBOUNCER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no pgbouncer on PATH ...
    monkeypatch.setattr("poolbench.local.pgbouncer.SEARCH_DIRS", (str(tmp_path),))  # ... nor in sbin
    doc = make_doc(steps=[1], variants=[{"name": "tx", "pooler": {"poolMode": "transaction"}}])
    assert cli.main(["run", str(write(tmp_path, doc))]) == 1
    err = capsys.readouterr().err
    assert "no pgbouncer binary was found" in err
    assert "apt-get install pgbouncer" in err
    assert "Traceback" not in err
    monkeypatch.setenv("POOLBENCH_PGBOUNCER", str(tmp_path / "nope"))
    assert cli.main(["run", str(write(tmp_path, doc))]) == 1
    assert f"POOLBENCH_PGBOUNCER={tmp_path / 'nope'} is not an executable pgbouncer" in capsys.readouterr().err


def test_an_own_app_benchmark_is_sent_to_the_cluster(
    tmp_path: Path, no_run: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "own.yaml"
    path.write_text((Path(__file__).parent.parent / "manifests/examples/own-app-step.yaml").read_text())
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.target" in err
    assert "poolbench observe --dsn" in err
    assert "Traceback" not in err
    assert no_run == []
