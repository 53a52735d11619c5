"""``observe`` and ``plan --dsn``: what is refused before any connection (one line, exit 2, no password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolbench import cli
from poolbench.db.live import scrub

SECRET = "hunter2-xyz"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["observe", "--dsn", "host=127.0.0.1", "--match", "user=app"], "--match: unknown key 'user'"),
        (["observe", "--dsn", "host=127.0.0.1", "--match", "usename"], "is not KEY=VALUE"),
        (["observe", "--dsn", f"postgresql://app:{SECRET}@127.0.0.1/db"], "--dsn carries a password"),
        (["observe", "--dsn", f"host=127.0.0.1 password={SECRET}"], "--dsn carries a password"),
        (["observe", "--dsn", f"host=127.0.0.1 password={SECRET} user"], "--dsn is not a valid connection string"),
        (["observe", "--dsn", "host=127.0.0.1", "--duration", "0"], "--duration: must be between"),
        (["observe", "--dsn", "host=127.0.0.1", "--interval", "1"], "--interval: must be between"),
        (["observe", "--dsn", "host=127.0.0.1", "--password-file", "/nonexistent/pw"], "cannot read"),
    ],
)
def test_refused_before_connecting(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err
    assert SECRET not in err


def test_plan_kube_names_a_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "apiVersion: poolbench.dev/v1alpha1\nkind: PoolBenchmark\nmetadata: {name: t}\nspec: {steps: [1]}\n"
    )
    assert cli.main(["plan", "--kube", "statefulset/db", str(spec)]) == 2
    assert "--kube: --kube must be deployment/NAME, not 'statefulset/db'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        f"invalid dsn: password={SECRET} user",
        f"postgresql://app:{SECRET}@host/db failed",
        f"password = '{SECRET}' host=x",
        f"login failed with {SECRET}",
    ],
)
def test_scrub_removes_the_password_wherever_it_hides(text: str) -> None:
    assert SECRET not in scrub(text, SECRET)
    assert SECRET not in scrub(text.replace(f"with {SECRET}", "with it"))
