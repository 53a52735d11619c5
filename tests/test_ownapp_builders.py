"""The own app's pure builders: a Deployment's selector as list text, the load Job of one step."""

from __future__ import annotations

import pytest

from poolbench.core.children import build_load_job, label_selector
from poolbench.core.spec import LoadJobSpec

pytestmark = pytest.mark.unit


def test_a_deployment_selector_becomes_the_pod_list_selector() -> None:
    selector = {
        "matchLabels": {"app": "shop", "tier": "web"},
        "matchExpressions": [
            {"key": "track", "operator": "In", "values": ["stable", "canary"]},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["b"]},
            {"key": "owner", "operator": "Exists"},
        ],
    }
    assert label_selector(selector) == "app=shop,tier=web,track in (stable,canary),!legacy,zone notin (b),owner"
    assert label_selector({"match_labels": {"app": "shop"}, "match_expressions": None}) == "app=shop"


def test_the_load_job_runs_once_for_the_hold_and_carries_the_users_command() -> None:
    job = build_load_job("bench", 2, LoadJobSpec(image="grafana/k6:1", command=["k6"], args=["run", "x.js"]), 60)
    assert job["metadata"]["name"] == "bench-load-2"
    assert job["metadata"]["labels"]["poolbench.dev/benchmark"] == "bench"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 360
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"] == [{"name": "load", "image": "grafana/k6:1", "command": ["k6"], "args": ["run", "x.js"]}]
