"""What the operator creates, as ``poolbench render`` shows it: the NetworkPolicies, read-only roots, the
spec hash and what the driver does with a child built from other inputs (a fake Kubernetes edge and,
for the API calls, the client's own models)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import pytest
import yaml

from poolbench.cli import main
from poolbench.core.children import (
    CONFIG_HASH_ANNOTATION,
    PASSWORD_PLACEHOLDER,
    SPEC_HASH_ANNOTATION,
    Credentials,
    build_children,
    child_action,
    image_digest,
    mounted_secrets,
    render,
    spec_hash,
    stamped_hash,
)
from poolbench.core.spec import load_text, parse_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
POOLED = parse_spec(
    {
        "steps": [1],
        "workload": {"role": "app"},
        "variants": [
            {"name": "direct"},
            {"name": "tx", "pooler": {"type": "PgBouncer", "poolMode": "transaction"}},
        ],
    }
)
REAL = Credentials("SUPER-S3CRET", "APP-S3CRET", "ADMIN-S3CRET")


def by_ref(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def built(spec: Any = POOLED, image: str = "wl:1", credentials: Credentials = REAL) -> list[dict[str, Any]]:
    return build_children("ab", spec, workload_image=image, operator_namespace="ops", credentials=credentials)


def pod_specs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] in ("StatefulSet", "Deployment", "Job")]


def test_network_policies_admit_only_the_benchmarks_clients_and_the_operator() -> None:
    objs = by_ref(built())
    postgres = objs[("NetworkPolicy", "ab-postgres")]["spec"]
    assert postgres["podSelector"]["matchLabels"] == {
        "poolbench.dev/benchmark": "ab",
        "app.kubernetes.io/component": "postgres",
    }
    assert postgres["policyTypes"] == ["Ingress"]
    (rule,) = postgres["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    operator_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "poolbench-operator"}},
    }
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"poolbench.dev/benchmark": "ab", "app.kubernetes.io/component": c}}}
        for c in ("workload", "pgbouncer")
    ] + [operator_peer]
    # the selectors select the pods the builders label: the server's, every variant's workload and pooler
    statefulset_pods = objs[("StatefulSet", "ab-postgres")]["spec"]["template"]["metadata"]["labels"]
    assert postgres["podSelector"]["matchLabels"].items() <= statefulset_pods.items()
    for name in ("ab--direct-workload", "ab--tx-workload"):
        labels = objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert rule["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()
    pgbouncer = objs[("NetworkPolicy", "ab-pgbouncer")]["spec"]
    pooler_pods = objs[("Deployment", "ab--tx-pgbouncer")]["spec"]["template"]["metadata"]["labels"]
    assert pgbouncer["podSelector"]["matchLabels"].items() <= pooler_pods.items()
    assert rule["from"][1]["podSelector"]["matchLabels"].items() <= pooler_pods.items()
    assert pgbouncer["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6432}]
    assert pgbouncer["ingress"][0]["from"][-1] == operator_peer
    assert len(pgbouncer["ingress"][0]["from"]) == 2  # the workload and the operator: not PostgreSQL
    # without a pooled variant there is no PgBouncer to fence
    direct = parse_spec({"steps": [1]})
    policies = [o for o in built(direct) if o["kind"] == "NetworkPolicy"]
    assert [o["metadata"]["name"] for o in policies] == ["ab-postgres", "ab-workload"]
    # the workload pods: their metrics port only (the API server's pod proxy reads it), from anywhere
    assert policies[1]["spec"]["podSelector"]["matchLabels"] == rule["from"][0]["podSelector"]["matchLabels"]
    assert policies[1]["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9187}]}]


def test_every_container_of_ours_has_a_read_only_root_and_a_writable_tmp() -> None:
    for pod in pod_specs(built()):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tmp"]["emptyDir"]
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
    postgres = by_ref(built())[("StatefulSet", "ab-postgres")]["spec"]["template"]["spec"]["containers"][0]
    assert {m["mountPath"] for m in postgres["volumeMounts"]} == {
        "/var/lib/postgresql/data",
        "/var/run/postgresql",
        "/tmp",
    }


def test_the_spec_hash_covers_the_inputs_and_images_but_never_a_password() -> None:
    real, shown = built(), built(credentials=Credentials("a", "b", "c"))
    assert [stamped_hash(o) for o in real] == [stamped_hash(o) for o in shown]  # passwords are not inputs
    for obj in real:
        digest = obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        assert digest.startswith("sha256:")
        assert len(digest) == 71
    rendered = by_ref(built(credentials=Credentials(PASSWORD_PLACEHOLDER, PASSWORD_PLACEHOLDER, PASSWORD_PLACEHOLDER)))
    for ref, obj in by_ref(real).items():
        assert spec_hash(rendered[ref]) == stamped_hash(obj), ref  # the hash is of what render prints
    assert "S3CRET" not in json.dumps([o["metadata"] for o in real])
    # another workload image: the workload Deployments' hashes change, nothing else's
    other = by_ref(built(image="wl:2"))
    changed = {ref for ref, obj in by_ref(real).items() if stamped_hash(obj) != stamped_hash(other[ref])}
    assert changed == {("Deployment", "ab--direct-workload"), ("Deployment", "ab--tx-workload")}
    # another pool mode changes pgbouncer.ini: its Secret's hash and, through the pod template's config
    # hash, its Deployment's (which rolls the pods that read it)
    session = POOLED.model_copy(deep=True)
    assert session.variants is not None
    assert session.variants[1].pooler is not None
    session.variants[1].pooler.pool_mode = "session"
    moved = by_ref(built(session))
    changed = {ref for ref, obj in by_ref(real).items() if stamped_hash(obj) != stamped_hash(moved[ref])}
    assert ("Secret", "ab--tx-pgbouncer") in changed
    assert ("Deployment", "ab--tx-pgbouncer") in changed
    template = moved[("Deployment", "ab--tx-pgbouncer")]["spec"]["template"]["metadata"]["annotations"]
    assert template[CONFIG_HASH_ANNOTATION] == stamped_hash(moved[("Secret", "ab--tx-pgbouncer")])
    assert mounted_secrets(moved[("Deployment", "ab--tx-pgbouncer")]) == ["ab--tx-pgbouncer"]


def test_child_action_keeps_ours_replaces_ours_built_otherwise_and_never_touches_anothers() -> None:
    (wanted,) = [o for o in built() if o["kind"] == "StatefulSet"]
    digest = stamped_hash(wanted)
    ours = {"metadata": {"ownerReferences": [{"uid": "u-1"}], "annotations": {SPEC_HASH_ANNOTATION: digest}}}
    assert child_action(wanted, ours, "u-1") == "keep"
    stale = {"metadata": {"ownerReferences": [{"uid": "u-1"}], "annotations": {SPEC_HASH_ANNOTATION: "sha256:0"}}}
    assert child_action(wanted, stale, "u-1") == "replace"
    unstamped = {"metadata": {"ownerReferences": [{"uid": "u-1"}]}}  # an older operator's
    assert child_action(wanted, unstamped, "u-1") == "replace"
    assert child_action(wanted, ours, "u-2") == "foreign"  # another benchmark's
    assert child_action(wanted, {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: digest}}}, "u-1") == "foreign"
    # the API client's models (snake_case attributes) read the same
    model = SimpleNamespace(
        metadata=SimpleNamespace(
            owner_references=[SimpleNamespace(uid="u-1")], annotations={SPEC_HASH_ANNOTATION: digest}
        )
    )
    assert child_action(wanted, model, "u-1") == "keep"


def test_image_digest_is_the_digest_whatever_the_runtime_puts_before_it() -> None:
    digest = "sha256:" + "ab" * 32
    assert image_digest(f"docker-pullable://postgres@{digest}") == digest
    assert image_digest(f"localhost/poolbench-postgres@{digest}") == digest
    assert image_digest(digest) == digest
    assert image_digest("podrunner://postgres:15") == "podrunner://postgres:15"


def test_render_prints_every_child_with_placeholder_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "manifests/examples/seed-pgbouncer.yaml"
    assert main(["render", str(path), "--workload-image", "wl:9", "--operator-namespace", "ops"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    bench = load_text(path.read_text())
    expected = build_children(bench.name, bench.spec, workload_image="wl:9", operator_namespace="ops")
    assert docs == expected  # the operator's own builder, the same list
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Secret", "Service", "NetworkPolicy", "StatefulSet", "Deployment"}
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert PASSWORD_PLACEHOLDER in "".join(secret["stringData"].values())
    workloads = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "workload"
    ]
    assert {c["image"] for d in workloads for c in d["spec"]["template"]["spec"]["containers"]} == {"wl:9"}


def test_render_of_your_own_app_is_its_load_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load((ROOT / "manifests/examples/own-app-step.yaml").read_text())
    doc["spec"]["target"]["load"] = {"image": "k6:1", "args": ["run", "x.js"]}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["render", str(path)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("Job", f"my-app-steps-load-{i}") for i in (1, 2, 3)]
    assert all(stamped_hash(d) == spec_hash(d) for d in docs)
    assert render(load_text((ROOT / "manifests/examples/own-app-observe.yaml").read_text())) == []


def test_render_of_a_bad_file_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load((ROOT / "manifests/examples/small.yaml").read_text())
    doc["spec"]["workload"]["threads"] = "six"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["render", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "spec.workload.threads" in captured.err
    assert "Traceback" not in captured.err
    assert main(["render", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


# -- the driver: a child found built from other inputs ----------------------------------------------------


class ProvisionKube:
    """The Kubernetes edge as provisioning uses it: what exists, and every call."""

    namespace = "ns"

    def __init__(self, existing: dict[tuple[str, str], Any]) -> None:
        self.existing = existing
        self.calls: list[tuple[str, str, str]] = []

    def ensure(self, obj: dict[str, Any]) -> bool:
        ref = (obj["kind"], obj["metadata"]["name"])
        if ref in self.existing:
            return False
        self.calls.append(("create", *ref))
        return True

    def read_child(self, kind: str, name: str) -> Any:
        self.calls.append(("read", kind, name))
        return self.existing[(kind, name)]

    def replace_child(self, obj: dict[str, Any], existing: Any) -> None:
        self.calls.append(("replace", obj["kind"], obj["metadata"]["name"]))

    def recreate(self, obj: dict[str, Any]) -> None:
        self.calls.append(("recreate", obj["kind"], obj["metadata"]["name"]))

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("status", status["phase"], status.get("message") or ""))

    def with_results(self, status: dict[str, Any] | None) -> dict[str, Any] | None:
        return status

    def write_results(self, config_map: dict[str, Any], owner_uid: str) -> str:
        self.calls.append(("results", "ConfigMap", config_map["metadata"]["name"]))
        return "written"


def provisioning_driver(kube: ProvisionKube, image: str = "wl:1") -> tuple[Any, list[tuple[str, str, str]]]:
    from poolbench_operator.config import Config
    from poolbench_operator.driver import Driver

    posted: list[tuple[str, str, str]] = []

    def adopt(child: dict[str, Any]) -> None:
        child["metadata"]["ownerReferences"] = [{"uid": "u-1"}]

    driver = Driver(
        kube=cast(Any, kube),
        body={"metadata": {"name": "ab", "uid": "u-1", "generation": 1}},
        spec=POOLED,
        stopped=SimpleNamespace(wait=lambda timeout=None: False),
        adopt=adopt,
        event=lambda *e: posted.append(e),
        logger=logging.getLogger("test"),
        config=Config(workload_image=image, namespace="ops"),
        key=b"k" * 32,
    )
    return driver, posted


def existing_from(objs: list[dict[str, Any]], owner: str = "u-1") -> dict[tuple[str, str], Any]:
    for obj in objs:
        obj["metadata"]["ownerReferences"] = [{"uid": owner}]
    return by_ref(objs)


def test_the_driver_keeps_children_built_from_the_same_inputs() -> None:
    kube = ProvisionKube(existing_from(built()))
    driver, posted = provisioning_driver(kube)
    driver.provision()
    assert not [c for c in kube.calls if c[0] in ("create", "replace", "recreate")]
    assert not posted


def test_the_driver_replaces_its_children_built_from_another_image_or_config() -> None:
    old = POOLED.model_copy(deep=True)
    assert old.variants is not None
    assert old.variants[1].pooler is not None
    old.variants[1].pooler.default_pool_size = 7  # another pgbouncer.ini
    kube = ProvisionKube(existing_from(built(old, image="wl:old")))
    driver, posted = provisioning_driver(kube, image="wl:new")
    driver.provision()
    changes = [c for c in kube.calls if c[0] in ("create", "replace", "recreate")]
    assert changes == [
        ("replace", "Deployment", "ab--direct-workload"),
        ("recreate", "Secret", "ab--tx-pgbouncer"),  # its config first, then the pods that read it
        ("replace", "Deployment", "ab--tx-pgbouncer"),
        ("replace", "Deployment", "ab--tx-workload"),
    ]
    replaced = [e for e in posted if e[1] == "ChildReplaced"]
    assert [e[0] for e in replaced] == ["Normal"] * 3
    assert "Deployment ab--direct-workload was built from other inputs" in replaced[0][2]


def test_a_child_that_is_not_the_benchmarks_is_left_alone_and_the_run_fails_saying_so() -> None:
    existing = existing_from(built())
    existing[("Deployment", "ab--direct-workload")]["metadata"]["ownerReferences"] = []  # the user's own
    kube = ProvisionKube(existing)
    driver, posted = provisioning_driver(kube)
    driver.execute()
    assert not [c for c in kube.calls if c[0] in ("replace", "recreate")]
    phase, message = next((c[1], c[2]) for c in kube.calls if c[0] == "status" and c[1] == "Failed")
    assert "Deployment ab--direct-workload already exists and is not this benchmark's" in message
    assert posted[-1][:2] == ("Warning", "Failed")


def test_a_steps_images_are_the_digests_its_pods_ran() -> None:
    from poolbench.core.results import StepResult
    from poolbench_operator.kube import running_images

    def pod(container: str, image_id: str) -> Any:
        status = SimpleNamespace(container_statuses=[SimpleNamespace(name=container, image_id=image_id)])
        return SimpleNamespace(status=status)

    pg, wl = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert running_images([pod("postgres", f"localhost/pg@{pg}"), pod("workload", wl), pod("x", "")]) == {
        "postgres": pg,
        "workload": wl,
    }
    driver, _ = provisioning_driver(ProvisionKube({}))
    driver.kube = SimpleNamespace(component_pods=lambda bench, component, variant=None: [pod(component, pg)])
    driver.images = {"workload": wl}
    step = StepResult(replicas=1)
    driver.record_images(SimpleNamespace(planned=SimpleNamespace(pooler=None), step=step))
    assert step.images == {"postgres": pg, "workload": wl}
    assert step.to_json()["images"] == {"postgres": pg, "workload": wl}
    assert driver.images == {}  # the next step starts empty


def test_kube_replaces_at_the_objects_version_and_keeps_a_services_cluster_ip() -> None:
    import kubernetes

    from poolbench_operator.kube import Kube

    with (
        mock.patch.object(kubernetes.client, "CoreV1Api"),
        mock.patch.object(kubernetes.client, "AppsV1Api"),
        mock.patch.object(kubernetes.client, "NetworkingV1Api"),
        mock.patch.object(kubernetes.client, "CustomObjectsApi"),
    ):
        k = Kube("ns")
    service = by_ref(built())[("Service", "ab-postgres")]
    existing = SimpleNamespace(
        metadata=SimpleNamespace(resource_version="42"),
        spec=SimpleNamespace(cluster_ip="10.96.0.9"),
    )
    k.replace_child(service, existing)
    ((name, namespace, body), _) = cast(Any, k.core.replace_namespaced_service).call_args
    assert (name, namespace) == ("ab-postgres", "ns")
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["spec"]["clusterIP"] == "10.96.0.9"
    assert "clusterIP" not in service["spec"]  # the built object is unchanged
    policy = by_ref(built())[("NetworkPolicy", "ab-postgres")]
    k.replace_child(policy, SimpleNamespace(metadata=SimpleNamespace(resource_version="7"), spec=None))
    cast(Any, k.networking.replace_namespaced_network_policy).assert_called_once()
    # A Deployment is deleted and created again, never updated (no update verb on Deployments: a user's
    # own Deployment changes only through its scale).
    deployment = next(c for c in built() if c["kind"] == "Deployment")
    k.replace_child(deployment, SimpleNamespace(metadata=SimpleNamespace(resource_version="9"), spec=None))
    cast(Any, k.apps.replace_namespaced_deployment).assert_not_called()
    cast(Any, k.apps.delete_namespaced_deployment).assert_called_once()
    ((_, created), _) = cast(Any, k.apps.create_namespaced_deployment).call_args
    assert created is deployment
