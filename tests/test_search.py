"""The breaking-point search: bisection guided by the prediction, on an oracle (pure, no I/O)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench.core.results import StepResult
from poolbench.core.search import found, most_probes, next_probe, searched
from poolbench.core.spec import SearchRange, parse_spec
from poolbench.core.verdict import comparison, overall_verdict


def run_search(lo: int, hi: int, breaking: int, predicted: int) -> list[StepResult]:
    """Probe an oracle that passes up to ``breaking`` replicas and fails above, until the search ends."""
    search = SearchRange(min=lo, max=hi)
    probes: list[StepResult] = []
    while (replicas := next_probe(search, predicted, probes)) is not None:
        assert replicas not in [p.replicas for p in probes], "a count is never probed twice"
        probes.append(StepResult(replicas=replicas, outcome="Passed" if replicas <= breaking else "Failed"))
    return probes


@pytest.mark.parametrize("breaking", range(0, 32))
@pytest.mark.parametrize("predicted", [1, 6, 15, 29, 30])
def test_the_search_finds_every_breaking_point_within_its_bound(breaking: int, predicted: int) -> None:
    probes = run_search(1, 30, breaking, predicted)
    assert len(probes) <= math.ceil(math.log2(30)) + 2 == most_probes(SearchRange(min=1, max=30))
    max_safe, failing = searched(SearchRange(min=1, max=30), probes)
    assert max_safe == (min(breaking, 30) if breaking >= 1 else None)
    if breaking < 30:
        assert failing is not None
        assert failing.replicas == max(breaking + 1, 1)
    else:
        assert failing is None  # every count up to max passed: the breaking point lies higher


def test_a_right_prediction_is_confirmed_in_two_probes() -> None:
    probes = run_search(1, 30, breaking=6, predicted=6)
    assert [(p.replicas, p.outcome) for p in probes] == [(6, "Passed"), (7, "Failed")]


def test_an_inconclusive_probe_ends_the_search() -> None:
    search = SearchRange(min=1, max=30)
    probes = [StepResult(replicas=6, outcome="Inconclusive")]
    assert next_probe(search, 6, probes) is None
    max_safe, failing = searched(search, probes)
    assert max_safe is None
    assert failing is probes[0]


def test_the_verdict_shows_found_beside_predicted() -> None:
    spec = parse_spec({"steps": {"search": {"min": 1, "max": 30}}, "workload": {"threads": 15}})
    probes = run_search(1, 30, breaking=5, predicted=6)  # the arithmetic says 6 (99 // 15); reality says 5
    verdict = overall_verdict(spec, probes)
    assert (verdict.max_safe_replicas, verdict.first_failing_replicas) == (5, 6)
    assert verdict.predicted_max_safe_replicas == 6
    assert verdict.summary.startswith(
        f"Search 1..30 in {len(probes)} steps: found between 5 and 6; the arithmetic predicted 6."
    )


def test_a_search_spec_is_refused_with_paths() -> None:
    from poolbench.core.spec import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec({"steps": {"search": {"min": 10, "max": 3}}})
    assert err.value.problems == [("spec.steps.search", "min must be less than max (10 >= 3)")]
    with pytest.raises(SpecError) as err:
        parse_spec({"steps": "ten"})
    assert err.value.problems == [("spec.steps", "must be a list of replica counts, or {search: {min: A, max: B}}")]


@settings(max_examples=300, deadline=None)
@given(
    lo=st.integers(1, 20),
    width=st.integers(1, 60),
    breaking=st.integers(0, 90),
    predicted=st.integers(0, 90),
    unseen_at=st.integers(0, 8),
)
def test_the_verdict_names_only_probed_counts_and_one_first_failing(
    lo: int, width: int, breaking: int, predicted: int, unseen_at: int
) -> None:
    """Any range, breaking point and prediction, with the monitor blind at the ``unseen_at``-th probe (or
    never): the search's findings name only counts that were probed, firstFailingReplicas is a probe that
    failed (the comparison says the same count), and BoundaryFound holds exactly for adjacent counts."""
    hi = lo + width
    spec = parse_spec({"steps": {"search": {"min": lo, "max": hi}}, "workload": {"threads": 3}})
    search = SearchRange(min=lo, max=hi)
    probes: list[StepResult] = []
    while (replicas := next_probe(search, predicted, probes)) is not None:
        outcome = "Inconclusive" if len(probes) == unseen_at else "Passed" if replicas <= breaking else "Failed"
        probes.append(
            StepResult(
                replicas=replicas, outcome=outcome, first_error_class="tooManyClients" if outcome == "Failed" else None
            )
        )
    verdict = overall_verdict(spec, probes)
    probed = {p.replicas for p in probes}
    findings_text = verdict.summary.split(": ", 1)[1].split("; the arithmetic predicted")[0]
    assert {int(n) for n in re.findall(r"\d+", findings_text)} <= probed, (findings_text, probed)
    first = verdict.first_failing_replicas
    assert first is None or any(p.replicas == first and p.outcome == "Failed" for p in probes)
    sentence = comparison(["v"], [verdict], [probes])
    assert (f"fails at {first} " in sentence) if first is not None else "fails at" not in sentence
    if found(search, probes):
        assert verdict.max_safe_replicas is not None
        assert first == verdict.max_safe_replicas + 1
        assert f"found between {verdict.max_safe_replicas} and {first}" in verdict.summary
