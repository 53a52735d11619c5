"""Property tests: whatever a user feeds `poolbench validate` or `poolbench run`, the answer is exit
0 or 2 with a message, never a traceback (hypothesis generates the documents)."""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolbench import cli
from poolbench.local import runner

SEED = yaml.safe_load((Path(__file__).resolve().parent.parent / "manifests" / "examples" / "seed.yaml").read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "5", "-1", "1e309", "NaN", "QueuePool", "app", "crash", "30s", "%s", ":x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, (*prefix, i))


SEED_PATHS = [p for p in paths(SEED) if p]


class RunStarted(BaseException):
    """The document passed every check and the run would start."""


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    def started(bench: Any, progress: Any = None) -> runner.LocalResult:
        raise RunStarted()

    monkeypatch.setattr(runner, "run_local", started)
    saved = {sig: signal.getsignal(sig) for sig in cli.STOP_SIGNALS}

    def check(text: str, command: str) -> None:
        path = tmp_path / "b.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            code = cli.main([command, str(path)])
        except RunStarted:
            code = 0
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        err = capsys.readouterr().err
        assert code in (0, 2), err
        assert "Traceback" not in err, err
        assert "unexpected error" not in err, err
        if code == 2:
            assert err.startswith("poolbench: ")

    return check


common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@common
@given(text=st.text(max_size=300))
def test_any_text_is_valid_or_invalid_input(harness: Any, text: str) -> None:
    harness(text.replace("\ud800", ""), "validate")


@common
@given(doc=values)
def test_any_yaml_document_is_valid_or_invalid_input(harness: Any, doc: Any) -> None:
    harness(yaml.safe_dump(doc, allow_unicode=True), "validate")


@common
@given(path=st.sampled_from(SEED_PATHS), value=values, command=st.sampled_from(["validate", "run"]))
def test_a_mutated_seed_is_valid_or_invalid_input(
    harness: Any, path: tuple[Any, ...], value: Any, command: str
) -> None:
    doc = copy.deepcopy(SEED)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    harness(yaml.safe_dump(doc, allow_unicode=True), command)


@common
@given(
    extra=st.dictionaries(
        st.sampled_from(["spec", "metadata", "status", "kind", "apiVersion", "x"]), values, max_size=3
    ),
    command=st.sampled_from(["validate", "run"]),
)
def test_a_seed_with_replaced_sections_is_valid_or_invalid_input(
    harness: Any, extra: dict[str, Any], command: str
) -> None:
    harness(yaml.safe_dump({**copy.deepcopy(SEED), **extra}, allow_unicode=True), command)
