"""Bad input: each malformed spec exits 2 naming the field, never a traceback."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench.cli import main
from tests.conftest import ROOT, make_doc

# (document or raw text, the field path the message must name)
MALFORMED = [
    (make_doc(steps=[]), "spec.steps"),
    (make_doc(steps=[0]), "spec.steps[0]"),
    (make_doc(steps=[5, -1]), "spec.steps[1]"),
    (make_doc(steps=["5"]), "spec.steps[0]"),
    (make_doc(steps=5), "spec.steps"),
    (make_doc(steps=[1] * 51), "spec.steps"),
    (make_doc(stepz=[1]), "spec.stepz"),
    (make_doc(postgres={"maxConnections": "many"}), "spec.postgres.maxConnections"),
    (make_doc(postgres={"maxConnections": 1}), "spec.postgres.maxConnections"),
    (make_doc(postgres={"superuserReservedConnections": -1}), "spec.postgres.superuserReservedConnections"),
    (make_doc(postgres={"settings": {"port": "1"}}), "spec.postgres.settings"),
    (make_doc(postgres={"settings": {"work_mem": 4}}), "spec.postgres.settings.work_mem"),
    (make_doc(workload={"threads": 0}), "spec.workload.threads"),
    (make_doc(workload={"threads": 100000}), "spec.workload.threads"),
    (make_doc(workload={"threads": 2.5}), "spec.workload.threads"),
    (make_doc(workload={"statement": ""}), "spec.workload.statement"),
    (make_doc(workload={"statement": "   "}), "spec.workload.statement"),
    (make_doc(workload={"role": "admin"}), "spec.workload.role"),
    (make_doc(workload={"onError": "ignore"}), "spec.workload.onError"),
    (make_doc(workload={"engine": {"poolClass": "MagicPool"}}), "spec.workload.engine.poolClass"),
    (make_doc(workload={"engine": {"poolClass": "NullPool", "maxOverflow": 3}}), "spec.workload.engine"),
    (make_doc(workload={"engine": {"poolSize": -2}}), "spec.workload.engine.poolSize"),
    (make_doc(workload={"engine": {"poolPrePing": "yes"}}), "spec.workload.engine.poolPrePing"),
    (make_doc(workload={"iterations": 1, "durationSeconds": 1}), "spec.workload"),
    (make_doc(workload={"holdSeconds": -1}), "spec.workload.holdSeconds"),
    (make_doc(sampling={"intervalMs": 1}), "spec.sampling.intervalMs"),
    (make_doc(stepTimeoutSeconds=0), "spec.stepTimeoutSeconds"),
    (make_doc(stopOnFailure="no"), "spec.stopOnFailure"),
    (make_doc(name="Ünïcode"), "metadata.name"),
    (make_doc(name="x" * 64), "metadata.name"),
    ({**make_doc(), "kind": "Pod"}, "kind"),
    ({**make_doc(), "apiVersion": "v1"}, "apiVersion"),
    ({k: v for k, v in make_doc().items() if k != "spec"}, "spec"),
    ("steps: [1\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("", "exactly one YAML document"),
]


@pytest.mark.parametrize("doc,field", MALFORMED, ids=[f for _, f in MALFORMED])
def test_malformed_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: Any, field: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err
    assert "Traceback" not in err


def test_missing_file_is_invalid_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(make_doc(steps=[], workload={"threads": -1})))
    proc = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "spec.steps" in proc.stderr
    assert "spec.workload.threads" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_accepts_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "manifests/examples/seed.yaml")]) == 0
