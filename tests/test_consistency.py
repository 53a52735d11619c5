"""One benchmark, every number about it: `plan`, the run's prediction, the verdict, the comparison and
the tables never contradict each other, whatever the spec (variants, providers, processes, rollouts,
searches). Random specs run through the step loop on a fake platform whose steps fail exactly where
the arithmetic says they must (no I/O; the real-server tests check the arithmetic itself).
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from poolbench import tables
from poolbench.clock import utc_now
from poolbench.core.benchmark import BenchmarkRun, PlannedStep
from poolbench.core.budget import predict, predicted_safe_replicas
from poolbench.core.plan import plan
from poolbench.core.results import StepResult, VariantStatus
from poolbench.core.spec import PoolBenchmarkSpec, PoolerSpec, SpecError, parse_spec
from poolbench.core.steploop import run_steps
from poolbench.core.verdict import first_failing_step
from poolbench.core.words import replicas_fit
from tests.test_steploop import TIMING, FakePlatform, Script


class ArithmeticOracle(FakePlatform):
    """A server and poolers that behave as the arithmetic's worst case: a step whose prediction does
    not fit fails with the class its cause names; every other step passes."""

    def __init__(self, spec: PoolBenchmarkSpec):
        super().__init__([])
        self.spec = spec
        self.by_name = {v.name: v for v in spec.effective_variants()}

    def scale(self, planned: PlannedStep) -> None:
        variant = self.by_name[planned.variant]
        p = predict(self.spec.for_variant(variant), planned.replicas, planned.pooler)
        if p.fits:
            self.scripts = [Script()]
        else:
            cls = {"clients": "poolerMaxClientConn", "kept": "poolerQueryWaitTimeout"}.get(
                p.check.cause, "tooManyClients"
            )
            self.scripts = [Script(crashed=True, outcomes={cls: 1})]
        super().scale(planned)

    def collect(self) -> list[Any]:
        reports = super().collect()
        script = self.script
        assert script is not None
        if script.crashed:
            cls = next(iter(script.outcomes))
            for report in reports:
                report.first_error_class = cls
        return reports


POSTGRES = st.one_of(
    st.builds(
        lambda m, r: {"maxConnections": m, "superuserReservedConnections": r}, st.integers(8, 300), st.integers(0, 5)
    ),
    st.builds(lambda g: {"provider": {"name": "rds", "memoryGiB": g}}, st.sampled_from([0.1, 0.25, 0.5, 1.0])),
    st.builds(lambda g: {"provider": {"name": "azure", "memoryGiB": g}}, st.sampled_from([2, 4])),
    st.builds(lambda g: {"provider": {"name": "cloudsql", "memoryGiB": g}}, st.sampled_from([0.6, 1.7, 3.75, 6.0])),
)
ENGINE = st.one_of(
    st.builds(
        lambda s, o: {"poolClass": "QueuePool", "poolSize": s, "maxOverflow": o}, st.integers(0, 8), st.integers(-1, 8)
    ),
    st.just({"poolClass": "NullPool"}),
)
POOLER = st.builds(
    lambda mode, pool, reserve, clients, instances: {
        "poolMode": mode,
        "defaultPoolSize": pool,
        "reservePoolSize": reserve,
        "maxClientConn": clients,
        "replicas": instances,
    },
    st.sampled_from(["session", "transaction"]),
    st.integers(1, 30),
    st.integers(0, 4),
    st.integers(2, 120),
    st.integers(1, 3),
)
VARIANT = st.builds(
    lambda pooler, engine: {"pooler": pooler, "engine": engine},
    st.one_of(st.none(), POOLER),
    st.one_of(st.none(), ENGINE),
)
STEPS = st.one_of(
    st.lists(st.integers(1, 30), min_size=1, max_size=4),
    st.builds(lambda lo, width: {"search": {"min": lo, "max": lo + width}}, st.integers(1, 10), st.integers(1, 30)),
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    variants = draw(st.lists(VARIANT, min_size=1, max_size=3))
    doc: dict[str, Any] = {
        "steps": draw(STEPS),
        "stepTimeoutSeconds": 30,
        "stopOnFailure": draw(st.booleans()),
        "postgres": draw(POSTGRES),
        "workload": {
            "threads": draw(st.integers(1, 12)),
            "processes": draw(st.integers(1, 3)),
            "role": draw(st.sampled_from(["superuser", "app"])),
            "holdSeconds": 1,
            "engine": draw(ENGINE),
        },
        "rollout": {"maxSurge": draw(st.sampled_from([0, 1, 2, "25%", "100%"]))},
    }
    if len(variants) > 1 or variants[0]["pooler"] is not None:
        doc["variants"] = [
            {"name": f"v{i}", **{k: v for k, v in variant.items() if v is not None}}
            for i, variant in enumerate(variants)
        ]
    return doc


def counts_named(text: str, pattern: str) -> set[int]:
    return {int(n) for n in re.findall(pattern, text)}


def check_summary(
    summary: str,
    spec: PoolBenchmarkSpec,
    pooler: PoolerSpec | None,
    safe: int,
    steps: list[StepResult],
    measured: list[StepResult],
) -> None:
    """The verdict's sentence names the predicted count, never calls a failed run passed, and names
    only probes that ran."""
    # The verdict's fit sentence names the predicted count, never another.
    if pooler is None:
        assert f"at most {replicas_fit(safe)} in " in summary or f"so at most {safe} " in summary, summary
    elif pooler.pool_mode == "transaction":
        assert f"at most {replicas_fit(safe)} the poolers" in summary, summary
    # A failed step never sits beside "All steps passed".
    if any(s.outcome == "Failed" for s in steps):
        assert "ll steps passed" not in summary
    # No output mentions a probe that did not run.
    ran = {s.replicas for s in measured}
    if spec.search is not None:
        named = counts_named(summary, r"the probe of (\d+)") | counts_named(summary, r"(\d+) passed and")
        named |= counts_named(summary, r"and (\d+) failed") | counts_named(summary, r"even (\d+) \(the search")
        named |= counts_named(summary, r"found between (\d+) and") | counts_named(summary, r"between \d+ and (\d+)")
        assert named <= ran, (named, ran, summary)


def check_plan(vspec: PoolBenchmarkSpec, pooler: PoolerSpec | None, safe: int) -> None:
    """plan: production arithmetic (no monitor slot, one more client per pooler instance) never calls
    fewer replicas safe than the benchmark's prediction, and its recommendation for a target agrees
    with its own count during a rollout."""
    budget = plan(vspec, None, pooler)
    assert budget.max_safe_replicas >= safe
    assert budget.max_safe_replicas_during_rollout <= budget.max_safe_replicas
    for target in {1, max(1, budget.max_safe_replicas_during_rollout), budget.max_safe_replicas_during_rollout + 1}:
        advice = plan(vspec, target, pooler).recommendations
        says_fits = advice[0].text.startswith(replicas_fit(target))
        assert says_fits == (target <= budget.max_safe_replicas_during_rollout), (target, budget, advice)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(doc=specs())
def test_plan_prediction_verdict_and_tables_never_contradict(doc: dict[str, Any]) -> None:
    try:
        spec = parse_spec(doc)
    except SpecError:
        assume(False)
        return
    oracle = ArithmeticOracle(spec)
    status = run_steps(BenchmarkRun(spec, clock=utc_now), oracle, oracle.monitor, TIMING)
    document = status.to_json()
    variants = spec.effective_variants()
    assert [v.name for v in status.variants] == [v.name for v in variants]
    assert status.verdict == status.variants[0].verdict  # the printer columns show the first variant's
    for index, variant in enumerate(variants):
        vspec, pooler = spec.for_variant(variant), variant.pooler
        result: VariantStatus = status.variants[index]
        verdict, steps = result.verdict, result.steps
        assert verdict is not None
        safe = predicted_safe_replicas(vspec, pooler)
        # The prediction the run states is the arithmetic's, and it calls safe exactly the counts up to it.
        assert verdict.predicted_max_safe_replicas == safe
        for replicas in range(1, safe + 4):
            assert predict(vspec, replicas, pooler).fits == (replicas <= safe), (replicas, safe)
        # Each step's own recorded expectation is the same rule's.
        for step in steps:
            if step.rollout_from is None and step.pooler is not None:
                expected = predict(vspec, step.replicas, pooler).check.outcome
                assert step.pooler.predicted_outcome == expected
        # Measured against a worst-case server: nothing beyond the prediction passes, nothing within fails.
        measured = [s for s in steps if s.rollout_from is None]
        for step in measured:
            assert (step.outcome == "Passed") == (step.replicas <= safe), (step.replicas, safe, step.outcome)
        if verdict.max_safe_replicas is not None:
            assert verdict.max_safe_replicas <= safe
        # One first-failing number: the verdict's, the comparison sentence's and the table's.
        failing = first_failing_step(verdict, measured)
        if verdict.first_failing_replicas is not None:
            assert failing is not None
            assert failing.outcome == "Failed"
            assert failing.replicas == verdict.first_failing_replicas > safe
        else:
            assert failing is None
        if spec.variants:
            name = variant.name
            if verdict.first_failing_replicas is not None:
                assert f"{name}: " in status.comparison
                part = status.comparison.split(f"{name}: ", 1)[1].split(";", 1)[0]
                assert f"fails at {verdict.first_failing_replicas} " in part, (part, verdict)
        json_steps = document["variants"][index]["steps"]
        json_verdict = document["variants"][index]["verdict"]
        table_step = tables.stopping_step(json_verdict, json_steps)
        assert (table_step["replicas"] if table_step else None) == verdict.first_failing_replicas
        check_summary(verdict.summary, spec, pooler, safe, steps, measured)
        check_plan(vspec, pooler, safe)
