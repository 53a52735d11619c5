"""spec.target.pools: the user's pool settings per pod, predicted by the built-in workload's arithmetic and
set beside the measured per-pod peak."""

from typing import Any

import pytest

from poolbench.core.budget import (
    app_pools_idle,
    app_pools_peak,
    compare_pools,
    own_app_answer,
    per_replica_idle,
    per_replica_peak,
)
from poolbench.core.spec import AppPoolsSpec, EngineSpec, SpecError, parse_document
from poolbench.core.words import own_app_words, pools_how, pools_words
from tests.conftest import make_doc

pytestmark = pytest.mark.unit

DATABASE = {"host": "pg-rw.db.svc", "dbname": "app", "monitorSecret": {"name": "pb-monitor"}}


def with_pools(pools: dict[str, Any]) -> dict[str, Any]:
    return make_doc(database=DATABASE, target={"deployment": "web", "mode": "Step", "pools": pools}, steps=[1])


def problems(pools: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_document(with_pools(pools))
    return dict(info.value.problems)


def pools(threads: int, processes: int = 1, **engine: Any) -> AppPoolsSpec:
    return AppPoolsSpec(threads=threads, processes=processes, engine=EngineSpec(**engine))


@pytest.mark.parametrize(
    ("given", "peak", "idle"),
    [
        (pools(20), 15, 5),  # QueuePool 5 + 10: the overflow caps 20 threads at 15, 5 kept
        (pools(8), 8, 5),  # 8 threads never reach 5 + 10
        (pools(20, pool_size=10, max_overflow=0), 10, 10),
        (pools(8, pool_class="NullPool"), 8, 0),  # one per checkout, none kept
        (pools(8, processes=3), 24, 15),  # 3 processes × min(8, 15), each keeping 5
        (pools(20, processes=3, pool_size=2, max_overflow=3), 15, 6),
        (pools(12, pool_size=0), 12, 12),  # pool_size 0: no limit, the queue keeps all
        (pools(12, max_overflow=-1), 12, 5),
        (pools(1, pool_class="StaticPool"), 1, 1),
        (pools(4, processes=2, pool_class="SingletonThreadPool", pool_size=4), 8, 8),
    ],
)
def test_the_pools_predict_what_the_arithmetic_knows(given: AppPoolsSpec, peak: int, idle: int) -> None:
    assert (app_pools_peak(given), app_pools_idle(given)) == (peak, idle)


def test_the_same_rule_as_the_built_in_workload() -> None:
    spec = parse_document(
        make_doc(workload={"threads": 20, "processes": 3, "engine": {"poolSize": 2, "maxOverflow": 3}})
    ).spec
    given = pools(20, processes=3, pool_size=2, max_overflow=3)
    assert (per_replica_peak(spec), per_replica_idle(spec)) == (app_pools_peak(given), app_pools_idle(given))


def test_the_spec_takes_pools_with_defaults() -> None:
    spec = parse_document(with_pools({"threads": 20})).spec
    assert spec.target is not None
    assert spec.target.pools is not None
    assert spec.target.pools.processes == 1
    assert spec.target.pools.engine.pool_class == "QueuePool"
    assert app_pools_peak(spec.target.pools) == 15


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ({"threads": 4, "engine": {"poolSize": -1}}, "spec.target.pools.engine.poolSize"),
        ({"threads": 4, "engine": {"maxOverflow": -2}}, "spec.target.pools.engine.maxOverflow"),
        ({"threads": 4, "engine": {"poolClass": "LifoPool"}}, "spec.target.pools.engine.poolClass"),
        ({"threads": 0}, "spec.target.pools.threads"),
        ({"threads": 4, "processes": 0}, "spec.target.pools.processes"),
        ({}, "spec.target.pools.threads"),
        ({"threads": 4, "workers": 2}, "spec.target.pools.workers"),
        ({"threads": 4, "engine": {"poolClass": "NullPool", "poolSize": 5}}, "spec.target.pools.engine"),
    ],
)
def test_bad_values_name_their_field(given: dict[str, Any], path: str) -> None:
    assert path in problems(given)


def test_pools_that_cannot_serve_their_threads_are_refused() -> None:
    static = problems({"threads": 4, "engine": {"poolClass": "StaticPool"}})
    assert "spec.target.pools.threads" in static["spec.target.pools.engine.poolClass"]
    assert "spec.target.pools.processes for more callers" in static["spec.target.pools.engine.poolClass"]
    singleton = problems({"threads": 8, "engine": {"poolClass": "SingletonThreadPool", "poolSize": 4}})
    assert "set poolSize to at least 8" in singleton["spec.target.pools.engine.poolSize"]


def test_the_built_in_workload_keeps_its_own_paths() -> None:
    doc = make_doc(workload={"threads": 4, "engine": {"poolClass": "StaticPool"}})
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    said = dict(info.value.problems)["spec.workload.engine.poolClass"]
    assert "spec.workload.processes for more callers" in said


@pytest.mark.parametrize(
    ("given", "how"),
    [
        (pools(20), "5 + 10 overflow"),
        (pools(8), "8 threads under pool 5 + 10 overflow"),
        (pools(8, processes=3), "3 processes × (8 threads under pool 5 + 10 overflow)"),
        (pools(4, pool_class="NullPool"), "NullPool, one per thread: 4 threads"),
        (pools(6, pool_size=0), "6 threads, no pool limit (poolSize 0)"),
        (pools(1, pool_class="StaticPool"), "StaticPool, one"),
    ],
)
def test_where_the_prediction_comes_from(given: AppPoolsSpec, how: str) -> None:
    assert pools_how(given) == how


def test_predicted_beside_measured_in_words() -> None:
    given = pools(20)
    assert (
        pools_words(given, compare_pools(given, 12, 5))
        == "predicted 15 per pod from your pools (5 + 10 overflow), measured 12"
    )
    over = compare_pools(given, 18, 5)
    assert over.over
    said = pools_words(given, over)
    assert said.startswith("predicted 15 per pod from your pools (5 + 10 overflow), measured 18: a pod held 3 more")
    assert "a pool setting is not what spec.target.pools says" in said
    assert "more than one engine" in said
    assert pools_words(given, compare_pools(given, 0, 0)).endswith(", none measured")


def test_an_answer_from_the_prediction_says_so() -> None:
    answer = own_app_answer(15, 97, 12, "25%", replicas=2, per_pod_from="predicted")
    assert answer.to_status()["perPodFrom"] == "predicted"
    words = own_app_words(answer)
    assert words.startswith("nothing measured per pod, so at your pools' predicted 15 per pod")
    assert own_app_words(own_app_answer(15, 97, 12)).startswith("at your measured 15 per pod")
