"""Thin Kubernetes API edge for the driver (sync ``kubernetes`` client, used from a sync daemon thread)."""

from __future__ import annotations

import base64
import copy
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import kubernetes
import kubernetes.watch
import urllib3
from kubernetes.client.exceptions import ApiException

from poolbench.core.children import (
    METRICS_PORT,
    POSTGRES_CONTAINER,
    ROLLOUT_ANNOTATION,
    Names,
    image_digest,
    owner_uids,
    selector,
)
from poolbench.core.contracts import metrics as metrics_contract
from poolbench.core.contracts.phases import DONE
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.results import RESULTS_KEY, join_saved
from poolbench.core.spec import API_GROUP, API_VERSION, PLURAL

from .credentials import KEY_FIELD, KEY_SECRET_NAME
from .metricstate import MetricState
from .podlog import PodLogSource
from .podstate import PodView, may_still_run, parse_metrics


def operator_key(namespace: str) -> bytes:
    """Read the operator's key Secret in its own namespace, creating it (random) on first start.
    Never logged."""
    core = kubernetes.client.CoreV1Api()
    for _ in range(3):
        try:
            secret = core.read_namespaced_secret(KEY_SECRET_NAME, namespace)
            data = secret.data or {}
            if KEY_FIELD not in data:
                raise RuntimeError(f"Secret {namespace}/{KEY_SECRET_NAME} has no {KEY_FIELD!r} field")
            return base64.b64decode(data[KEY_FIELD])
        except ApiException as err:
            if err.status != 404:
                raise
        body: Any = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": KEY_SECRET_NAME, "labels": {"app.kubernetes.io/name": "poolbench-operator"}},
            "data": {KEY_FIELD: base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        try:
            core.create_namespaced_secret(namespace, body)
        except ApiException as err:
            if err.status != 409:  # another start won the race: read theirs
                raise
    raise RuntimeError(f"could not read or create Secret {namespace}/{KEY_SECRET_NAME}")


def load_config() -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


#: API answers the driver expects and handles (created already, gone already): not errors.
EXPECTED_STATUSES = (404, 409)


class CountingApiClient(kubernetes.client.ApiClient):
    """The default client, counting each failed call (an unexpected status or no answer at all) into
    the operator's health metrics."""

    def __init__(self, state: MetricState):
        super().__init__()
        self.state = state

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call_api(*args, **kwargs)
        except ApiException as err:
            if err.status not in EXPECTED_STATUSES:
                self.state.count(api_errors=1)
            raise
        except urllib3.exceptions.HTTPError:
            self.state.count(api_errors=1)
            raise


#: What became of a write of the results ConfigMap (``Kube.write_results``).
ResultsWrite = Literal["written", "foreign", "tooLarge"]

#: Each kind of child: the API client attribute of ``Kube`` and the method suffix its calls share.
CHILD_APIS = {
    "Secret": ("core", "namespaced_secret"),
    "ConfigMap": ("core", "namespaced_config_map"),
    "Service": ("core", "namespaced_service"),
    "StatefulSet": ("apps", "namespaced_stateful_set"),
    "Deployment": ("apps", "namespaced_deployment"),
    "NetworkPolicy": ("networking", "namespaced_network_policy"),
}
RECREATE_ATTEMPTS = 20  # a deleted object's name is free again within moments (no finalizers of ours)


def running_images(pods: list[Any]) -> dict[str, str]:
    """Container name → the digest of the image it runs (``status.containerStatuses[].imageID``)."""
    out: dict[str, str] = {}
    for pod in pods:
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            if cs.image_id:
                out[cs.name] = image_digest(cs.image_id)
    return out


class Kube:
    def __init__(self, namespace: str, state: MetricState | None = None):
        self.namespace = namespace
        self.state = state
        self.client = CountingApiClient(state) if state is not None else None
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.networking = kubernetes.client.NetworkingV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        # A done replica's summary is final: read once per pod and container restart count.
        self.done_summaries: dict[tuple[str, int], ReplicaSummary] = {}

    # -- children ---------------------------------------------------------------------------
    def _child_api(self, verb: str, kind: str) -> Callable[..., Any]:
        client, suffix = CHILD_APIS[kind]
        call: Callable[..., Any] = getattr(getattr(self, client), f"{verb}_{suffix}")
        return call

    def ensure(self, obj: dict[str, Any]) -> bool:
        """Create ``obj`` unless it exists. Returns True when created. Never duplicates."""
        try:
            self._child_api("create", obj["kind"])(self.namespace, obj)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def read_child(self, kind: str, name: str) -> Any:
        return self._child_api("read", kind)(name, self.namespace)

    def replace_child(self, obj: dict[str, Any], existing: Any) -> None:
        """Put ``obj`` in place of ``existing`` (an update at its resourceVersion: a concurrent change
        makes it fail, never lost). A Service keeps its cluster IP, which cannot change. A Deployment is
        deleted and created again instead: the operator has no ``update`` on Deployments, so that the
        user's own (``spec.target``) can change only through their scale."""
        if obj["kind"] == "Deployment":
            self.recreate(obj)
            return
        body = copy.deepcopy(obj)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        if obj["kind"] == "Service" and existing.spec is not None:
            body["spec"]["clusterIP"] = existing.spec.cluster_ip  # the API server fills clusterIPs from the old one
        self._child_api("replace", obj["kind"])(obj["metadata"]["name"], self.namespace, body)

    def recreate(self, obj: dict[str, Any]) -> None:
        """Delete ``obj``'s namesake and create ``obj`` (a Secret, which the operator may not read or update;
        a Deployment, which it may not update)."""
        self.delete_children([(obj["kind"], obj["metadata"]["name"])])
        for _ in range(RECREATE_ATTEMPTS):
            if self.ensure(obj):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{obj['kind']} {obj['metadata']['name']} was deleted but its name is still taken")

    def delete_children(self, refs: list[tuple[str, str]]) -> None:
        """Delete (kind, name) children in order (``poolbench.core.children.child_refs``); gone already is fine."""
        for kind, name in refs:
            try:
                self._child_api("delete", kind)(name, self.namespace, propagation_policy="Background")
            except ApiException as err:
                if err.status != 404:
                    raise

    def postgres_ready(self, names: Names) -> bool:
        """The database pod is Ready (its own condition, not the StatefulSet's count of it, which its
        controller updates a moment later) and not being deleted."""
        try:
            pod: Any = self.core.read_namespaced_pod(names.postgres_pod, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        if pod.metadata.deletion_timestamp is not None or pod.status is None:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    def postgres_pod_ip(self, names: Names) -> str | None:
        try:
            pod = self.core.read_namespaced_pod(names.postgres_pod, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return pod.status.pod_ip if pod.status else None

    def follow_postgres_log(self, names: Names) -> PodLogSource:
        """The PostgreSQL pod's log, followed from now on in a thread of its own (``close`` it)."""
        return PodLogSource(self.core, self.namespace, names.postgres_pod, POSTGRES_CONTAINER)

    def scale_workload(self, names: Names, replicas: int) -> None:
        self.scale_deployment(names.workload, replicas)

    def scale_deployment(self, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, self.namespace, {"spec": {"replicas": replicas}})

    def roll_workload(self, names: Names, token: str) -> None:
        """A rolling update of the workload: a new pod template (its rollout annotation set to ``token``)."""
        body = {"spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: token}}}}}
        self.apps.patch_namespaced_deployment(names.workload, self.namespace, body)

    # -- pods ---------------------------------------------------------------------------------
    def _pods(self, benchmark: str, component: str, variant: str | None = None) -> list[Any]:
        sel = ",".join(f"{k}={v}" for k, v in selector(benchmark, component, variant).items())
        pods: list[Any] = self.core.list_namespaced_pod(self.namespace, label_selector=sel).items
        return pods

    def workload_pods(self, benchmark: str, variant: str | None = None) -> list[Any]:
        """The step's live replicas (pods being deleted are no longer part of it); ``variant``: only
        that variant's (with ``spec.variants``)."""
        return [p for p in self._pods(benchmark, "workload", variant) if p.metadata.deletion_timestamp is None]

    def workload_stopped(self, benchmark: str, seconds: float, finished: Mapping[str, int]) -> bool:
        """Whether no replica of any variant can connect any more (``podstate.may_still_run``: every pod
        gone, or marked for deletion with all its containers terminated or its replica ``finished``),
        waiting for it at most ``seconds`` on a watch of the pods, so it is seen as it happens."""
        sel = ",".join(f"{k}={v}" for k, v in selector(benchmark, "workload").items())
        listing: Any = self.core.list_namespaced_pod(self.namespace, label_selector=sel)
        pods: dict[str, Any] = {p.metadata.name: p for p in listing.items}
        if not any(may_still_run(p, finished) for p in pods.values()):
            return True
        watch = kubernetes.watch.Watch()
        try:
            for event in watch.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=sel,
                resource_version=listing.metadata.resource_version,
                timeout_seconds=max(1, round(seconds)),
                _request_timeout=seconds + 10,
            ):
                pod = event["object"]
                if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                if event["type"] == "DELETED":
                    pods.pop(pod.metadata.name, None)
                else:
                    pods[pod.metadata.name] = pod
                if not any(may_still_run(p, finished) for p in pods.values()):
                    return True
        except (ApiException, urllib3.exceptions.HTTPError):
            pass  # an expired resource version or a dropped watch: the caller asks again, from a new list
        finally:
            watch.stop()
        return False

    def component_pods(self, benchmark: str, component: str, variant: str | None = None) -> list[Any]:
        """The benchmark's pods of one component (``postgres``, ``pgbouncer``, ``workload``); ``variant``:
        only that variant's."""
        return self._pods(benchmark, component, variant)

    def pooler_pod_ips(self, benchmark: str, variant: str) -> list[str]:
        """IPs of the variant's ready PgBouncer pods (not terminating), in pod-name order."""
        ips = []
        for pod in sorted(self._pods(benchmark, "pgbouncer", variant), key=lambda p: p.metadata.name):
            status = pod.status
            if pod.metadata.deletion_timestamp is not None or status is None or not status.pod_ip:
                continue
            if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
                ips.append(status.pod_ip)
        return ips

    def pod_view(self, pod: Any) -> PodView:
        restarts, last_message = 0, None
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            restarts += cs.restart_count or 0
            terminated = cs.last_state.terminated if cs.last_state else None
            if terminated is not None and terminated.message:
                last_message = terminated.message
        metrics = None
        running = pod.status is not None and pod.status.phase == "Running" and pod.status.pod_ip
        if running:
            try:
                text = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod.metadata.name}:{METRICS_PORT}", self.namespace, "metrics", _request_timeout=3
                )
                metrics = parse_metrics(text)
            except Exception:  # noqa: BLE001 - API, urllib3 or parse errors: an unreachable pod is just not reporting yet
                metrics = None
        summary = None
        if metrics is not None and metrics.phase == DONE:
            key = (pod.metadata.name, restarts)
            summary = self.done_summaries.get(key) or self._summary(pod.metadata.name)
            if summary is not None:
                self.done_summaries[key] = summary
        return PodView(pod.metadata.name, restarts, metrics, last_message, summary)

    def _summary(self, pod_name: str) -> ReplicaSummary | None:
        """A replica's summary once it is done (its pool's connections timeline: the client witness), as it
        serves it; raw bytes, as the API client would turn a JSON body into a Python repr."""
        try:
            response = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod_name}:{METRICS_PORT}",
                self.namespace,
                metrics_contract.SUMMARY_HTTP_PATH,
                _request_timeout=3,
                _preload_content=False,
            )
            raw: Any = getattr(response, "data", response)  # a urllib3 response without preloading
            return ReplicaSummary.parse(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw))
        except Exception:  # noqa: BLE001 - not served (an older image) or unreachable: the metrics' maximum stands
            return None

    # -- the user's own Deployment, its HPA, its pods, the monitor's Secret (spec.target, spec.database) --
    def secret_values(self, name: str, *keys: str) -> list[str | None]:
        """The named keys of a Secret in this namespace, decoded (None: no such key). Never logged."""
        secret: Any = self.core.read_namespaced_secret(name, self.namespace)
        data = secret.data or {}
        return [base64.b64decode(data[k]).decode("utf-8") if k in data else None for k in keys]

    def deployment(self, name: str) -> Any:
        return self.apps.read_namespaced_deployment(name, self.namespace)

    def deployment_replicas(self, name: str) -> int:
        """The replica count as the API server has it now (its scale subresource), read back after a change."""
        scale: Any = self.apps.read_namespaced_deployment_scale(name, self.namespace)
        return int(scale.spec.replicas or 0)

    def autoscalers_of(self, deployment: str) -> list[tuple[str, int]]:
        """(name, maxReplicas) of every autoscaling/v2 HPA that targets the Deployment."""
        hpas: Any = kubernetes.client.AutoscalingV2Api(self.client).list_namespaced_horizontal_pod_autoscaler(
            self.namespace
        )
        return [
            (h.metadata.name, int(h.spec.max_replicas))
            for h in hpas.items
            if h.spec.scale_target_ref.kind == "Deployment" and h.spec.scale_target_ref.name == deployment
        ]

    def pods_matching(self, label_selector: str) -> list[Any]:
        """Pods of a selector, those being deleted too (their connections are still the app's)."""
        pods: list[Any] = self.core.list_namespaced_pod(self.namespace, label_selector=label_selector).items
        return pods

    def create_job(self, job: dict[str, Any]) -> None:
        body: Any = job
        try:
            kubernetes.client.BatchV1Api(self.client).create_namespaced_job(self.namespace, body)
        except ApiException as err:
            if err.status != 409:  # already there: a resumed hold
                raise

    def delete_job(self, name: str) -> None:
        try:
            kubernetes.client.BatchV1Api(self.client).delete_namespaced_job(
                name, self.namespace, propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # -- the results ConfigMap ---------------------------------------------------------------------
    def read_results(self, name: str) -> str | None:
        """The whole status the results ConfigMap ``name`` holds; None when it is not there (yet)."""
        try:
            config_map = self.read_child("ConfigMap", name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return (config_map.data or {}).get(RESULTS_KEY)

    def with_results(self, status: dict[str, Any] | None) -> dict[str, Any] | None:
        """A resource's status (the summary) joined with the detail of its finished steps kept in its
        results ConfigMap (``status.resultsConfigMap``); as it is without one."""
        if not status or not status.get("resultsConfigMap"):
            return status
        return join_saved(status, self.read_results(status["resultsConfigMap"]))

    def write_results(self, config_map: dict[str, Any], owner_uid: str) -> ResultsWrite:
        """Create the results ConfigMap, or replace its data when it is the benchmark's (``owner_uid``
        among its owner references): "written". A ConfigMap of that name that is not the benchmark's
        is never touched: "foreign". Data the API server refuses for its size (a ConfigMap holds
        1 MiB): "tooLarge", the ConfigMap as it was."""
        try:
            if self.ensure(config_map):
                return "written"
            name = config_map["metadata"]["name"]
            if owner_uid not in owner_uids(self.read_child("ConfigMap", name)):
                return "foreign"
            self._child_api("patch", "ConfigMap")(name, self.namespace, {"data": config_map["data"]})
        except ApiException as err:
            if err.status in (413, 422):  # too large for the request, or for a ConfigMap
                return "tooLarge"
            raise
        return "written"

    # -- the custom resource --------------------------------------------------------------------
    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        """A JSON merge patch of the status (a key set to null is removed)."""
        self.custom.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name, {"status": status}
        )
        if self.state is not None:
            self.state.count(status_patches=1)
