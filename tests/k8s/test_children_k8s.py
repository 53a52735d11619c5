"""What the operator creates, against a real API server: exactly what ``poolbench render`` prints (kinds,
names, spec hashes, the NetworkPolicies' selectors), children built from other inputs replaced when the
operator starts again with a new workload image, an object of a child's name that is not the
benchmark's left alone and reported, and each step's image IDs in status."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from poolbench.core.children import SPEC_HASH_ANNOTATION, render
from poolbench.core.spec import load_text
from tests.harness.kube import wait_for
from tests.harness.operator import create_namespace, kubectl
from tests.k8s.test_operator_e2e import apply_benchmark, benchmark, events, quick, wait_phase

pytestmark = pytest.mark.k8s

PATHS = {
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
}
NEXT_IMAGE = "poolbench-workload:next"


def created(kube: Any, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the operator's in the namespace, by (kind, name)."""
    sel = {"labelSelector": "app.kubernetes.io/managed-by=poolbench-operator"}
    return {
        (kind, o["metadata"]["name"]): o for kind, path in PATHS.items() for o in kube.items(path.format(ns=ns), **sel)
    }


def rendered(doc: dict[str, Any], image: str) -> dict[tuple[str, str], dict[str, Any]]:
    objs = render(load_text(yaml.safe_dump(doc)), workload_image=image, operator_namespace="poolbench-system")
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def replaced_objects(kube: Any, ns: str) -> set[str]:
    """ "KIND NAME" of each child the operator's ChildReplaced events name."""
    return {e["message"].split(" was built")[0] for e in events(kube, ns, "fenced") if e["reason"] == "ChildReplaced"}


def test_the_operator_creates_what_render_prints_and_replaces_what_was_built_otherwise(
    operator: Any, control_plane: Any, kube: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = create_namespace(kube, "fence")
    doc = quick(
        "fenced",
        steps=[1, 1, 1],
        workload={"threads": 2, "durationSeconds": 4, "holdSeconds": 1, "onError": "count"},
    )
    apply_benchmark(control_plane, ns, doc)
    wait_phase(kube, ns, "fenced", phases=("Running",), timeout=180)
    first = rendered(doc, "poolbench-workload:dev")
    live = created(kube, ns)
    assert set(live) == set(first)  # every kind and name, nothing more
    for ref, obj in first.items():
        assert (
            live[ref]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
            == obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        ), ref
    policy = live[("NetworkPolicy", "fenced-postgres")]["spec"]
    assert policy == first[("NetworkPolicy", "fenced-postgres")]["spec"]
    assert {"podSelector", "policyTypes", "ingress"} <= set(policy)

    # The operator stops mid-run; some children are marked as an older build's, and it starts again
    # with a new workload image (an upgrade): each child built otherwise is replaced, the rest kept.
    operator.stop()
    for kind, name in (("StatefulSet", "fenced-postgres"), ("Service", "fenced-postgres")):
        resource = PATHS[kind].format(ns=ns).rsplit("/", 1)[1]
        kubectl(
            control_plane,
            "-n",
            ns,
            "annotate",
            "--overwrite",
            f"{resource}/{name}",
            f"{SPEC_HASH_ANNOTATION}=sha256:old",
        )
    cluster_ip = live[("Service", "fenced-postgres")]["spec"]["clusterIP"]
    monkeypatch.setenv("POOLBENCH_WORKLOAD_IMAGE", NEXT_IMAGE)
    try:
        operator.start()
        wait_for(
            lambda: (
                replaced_objects(kube, ns)
                >= {"StatefulSet fenced-postgres", "Service fenced-postgres", "Deployment fenced-workload"}
            ),
            120,
            interval=1.0,
            what="the children built otherwise replaced",
        )
        obj = wait_phase(kube, ns, "fenced", timeout=300)
        assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    finally:
        operator.stop()
        monkeypatch.delenv("POOLBENCH_WORKLOAD_IMAGE")
        operator.start()
    assert replaced_objects(kube, ns) == {  # the rest kept
        "StatefulSet fenced-postgres",
        "Service fenced-postgres",
        "Deployment fenced-workload",
    }
    after = rendered(doc, NEXT_IMAGE)
    live = created(kube, ns)
    assert set(live) == set(after)
    for ref, rendered_obj in after.items():
        assert (
            live[ref]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
            == rendered_obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        ), ref
    workload = live[("Deployment", "fenced-workload")]["spec"]["template"]["spec"]["containers"][0]
    assert workload["image"] == NEXT_IMAGE
    assert live[("Service", "fenced-postgres")]["spec"]["clusterIP"] == cluster_ip  # replaced in place
    # Each step says which images ran it (the stand-in kubelet's image IDs name the image).
    steps = obj["status"]["variants"][0]["steps"]
    assert len(steps) == 3
    for step in steps:
        assert set(step["images"]) == {"postgres", "workload"}, step
        assert step["images"]["postgres"].startswith("podrunner://"), step["images"]
    assert steps[-1]["images"]["workload"] == f"podrunner://{NEXT_IMAGE}"
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_an_object_with_a_childs_name_that_is_not_the_benchmarks_is_left_alone_and_reported(
    operator: Any, control_plane: Any, kube: Any
) -> None:
    ns = create_namespace(kube, "foreign")
    mine = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken-postgres", "labels": {"team": "ours"}},
        "spec": {"selector": {"app": "ours"}, "ports": [{"port": 5432}]},
    }
    before = kube.create(f"/api/v1/namespaces/{ns}/services", mine)
    apply_benchmark(control_plane, ns, quick("taken"))
    obj = wait_phase(kube, ns, "taken", timeout=120)
    assert obj["status"]["phase"] == "Failed"
    assert "Service taken-postgres already exists and is not this benchmark's" in obj["status"]["message"]
    after = kube.get(f"/api/v1/namespaces/{ns}/services/taken-postgres")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # untouched
    assert not after["metadata"].get("ownerReferences")
    assert any(e["type"] == "Warning" and "taken-postgres" in e["message"] for e in events(kube, ns, "taken"))
    assert benchmark(kube, ns, "taken")["status"]["phase"] == "Failed"
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_a_configmap_with_the_results_name_that_is_not_the_benchmarks_is_left_alone(
    operator: Any, control_plane: Any, kube: Any
) -> None:
    """The results ConfigMap (each step's detail) is written at every step's start and end: a user's
    ConfigMap of that name is never written to; the benchmark still runs, its status keeps each step's
    summary and does not point at the user's ConfigMap, and one warning says why the detail is missing."""
    ns = create_namespace(kube, "results-taken")
    mine = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kept-results", "labels": {"team": "ours"}},
        "data": {"status.json": '{"ours": true}', "notes": "the team's"},
    }
    before = kube.create(f"/api/v1/namespaces/{ns}/configmaps", mine)
    apply_benchmark(control_plane, ns, quick("kept"))
    obj = wait_phase(kube, ns, "kept", timeout=180)
    status = obj["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert [s["outcome"] for s in status["variants"][0]["steps"]] == ["Passed", "Passed"]
    assert status["variants"][0]["steps"][1]["peakConnections"] == 2 * 2  # 2 replicas x 2 threads
    assert status["resultsConfigMap"] == ""  # the user's ConfigMap is not named as the results
    after = kube.get(f"/api/v1/namespaces/{ns}/configmaps/kept-results")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # untouched
    assert after["data"] == mine["data"]
    assert not after["metadata"].get("ownerReferences")
    warnings = [e for e in events(kube, ns, "kept") if e.get("reason") == "ResultsNotKept"]
    assert len(warnings) == 1, warnings
    assert "ConfigMap kept-results already exists and is not this benchmark's" in warnings[0]["message"]
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_the_results_configmap_is_written_only_when_ours_and_never_past_its_size(installed: Any, kube: Any) -> None:
    """The operator's write of the results ConfigMap, against the real API server: a ConfigMap that is not
    the benchmark's is "foreign" and untouched; data over a ConfigMap's 1 MiB is refused by the server,
    "tooLarge", on create (nothing made) and on patch (the copy before stays)."""
    import kubernetes

    from poolbench.core.children import build_results_config_map
    from poolbench.core.results import RESULTS_KEY
    from poolbench_operator.kube import Kube as OperatorKube

    ns = create_namespace(kube, "results-write")
    kubernetes.config.load_kube_config(config_file=str(installed.kubeconfig))
    writer = OperatorKube(ns)
    big = "x" * (1024 * 1024 + 1)
    path = f"/api/v1/namespaces/{ns}/configmaps"
    try:
        assert writer.write_results(build_results_config_map("huge", big), "no-uid") == "tooLarge"
        assert kube.get_or_none(f"{path}/huge-results") is None
        # An owner the garbage collector leaves alone: another ConfigMap, standing in for the benchmark.
        anchor = kube.create(path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "anchor"}})
        uid = anchor["metadata"]["uid"]
        ours = build_results_config_map("mine", '{"phase": "Running"}')
        ours["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "anchor", "uid": uid}]
        assert writer.write_results(ours, uid) == "written"  # created
        ours["data"][RESULTS_KEY] = '{"phase": "Completed"}'
        assert writer.write_results(ours, uid) == "written"  # patched
        assert kube.get(f"{path}/mine-results")["data"] == {RESULTS_KEY: '{"phase": "Completed"}'}
        ours["data"][RESULTS_KEY] = big
        assert writer.write_results(ours, uid) == "tooLarge"
        assert kube.get(f"{path}/mine-results")["data"] == {RESULTS_KEY: '{"phase": "Completed"}'}
        theirs = kube.create(
            path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "t-results"}, "data": {"a": "b"}}
        )
        assert writer.write_results(build_results_config_map("t", "{}"), uid) == "foreign"
        after = kube.get(f"{path}/t-results")
        assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
        assert after["data"] == {"a": "b"}
    finally:
        kube.delete(f"/api/v1/namespaces/{ns}")
