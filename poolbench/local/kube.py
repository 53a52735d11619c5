"""What the cluster says of the user's app (``plan --kube deployment/NAME``): its Deployment's replicas
and rollout surge, its HorizontalPodAutoscaler's range (autoscaling/v2) and its pods' IPs. Only reads,
with the user's own kubeconfig (the ``operator`` extra's kubernetes client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.children import label_selector

#: How long one API call may take before the cluster counts as unreachable.
REQUEST_TIMEOUT_SECONDS = 15
DEPLOYMENT_KINDS = ("deployment", "deployments", "deploy", "deployment.apps", "deployments.apps")


class KubeError(Exception):
    """The cluster could not answer (no kubeconfig, unreachable, forbidden, not found): one line."""


@dataclass(frozen=True)
class DeploymentFacts:
    namespace: str
    name: str
    replicas: int | None  # spec.replicas (None: the HPA or the default decides)
    max_surge: int | str | None  # the RollingUpdate's maxSurge; None for Recreate (no surge pods)
    hpa_name: str | None
    hpa_min: int | None
    hpa_max: int | None
    pod_ips: dict[str, str]  # pod IP -> pod name, the Deployment's pods that have one

    def describe(self) -> str:
        """'deployment shop/web: 3 replicas, HPA web 2..20, maxSurge 25%'."""
        replicas = "replicas unset" if self.replicas is None else f"{self.replicas} replicas"
        hpa = f", HPA {self.hpa_name} {self.hpa_min}..{self.hpa_max}" if self.hpa_name else ", no HPA"
        surge = "Recreate (no surge)" if self.max_surge is None else f"maxSurge {self.max_surge}"
        return f"deployment {self.namespace}/{self.name}: {replicas}{hpa}, {surge}, {len(self.pod_ips)} pod IPs"

    def to_status(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "replicas": self.replicas,
            "maxSurge": self.max_surge,
            "hpa": None if self.hpa_name is None else {"name": self.hpa_name, "min": self.hpa_min, "max": self.hpa_max},
            "podIPs": len(self.pod_ips),
        }


def parse_target(text: str) -> str:
    """'deployment/NAME' → NAME; KubeError for anything else."""
    kind, sep, name = text.partition("/")
    if not sep or kind.lower() not in DEPLOYMENT_KINDS or not name or "/" in name:
        raise KubeError(f"--kube must be deployment/NAME, not {text!r}")
    return name


def api_error(err: Exception, what: str) -> KubeError:
    status = getattr(err, "status", None)
    if status == 404:
        return KubeError(f"{what} not found")
    if status in (401, 403):
        return KubeError(f"not allowed to read {what} (HTTP {status}): the kubeconfig's user needs get/list on it")
    reason = getattr(err, "reason", None) or " ".join(str(err).split())[:200]
    return KubeError(f"could not read {what}: {reason}")


def read_deployment(target: str, namespace: str | None = None) -> DeploymentFacts:
    """The Deployment named by ``target`` ('deployment/NAME') in ``namespace`` (default: the kubeconfig
    context's namespace, else 'default'), its HPA and its pods' IPs."""
    from kubernetes import client

    name = parse_target(target)
    api, default_namespace = open_client()
    namespace = namespace or default_namespace
    what = f"deployment {namespace}/{name}"
    try:
        with api:
            return _read(client, api, namespace, name)
    except KubeError:
        raise
    except Exception as err:  # noqa: BLE001 - ApiException, or urllib3's for an unreachable API server
        raise api_error(err, what) from None


def open_client(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, str]:
    """An API client from the user's kubeconfig (``kubeconfig`` or $KUBECONFIG or ~/.kube/config, the
    ``context`` or the current one) and that context's namespace ('default' when it names none)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
        namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    except (ConfigException, OSError, TypeError, ValueError) as err:
        raise KubeError(f"no usable kubeconfig: {' '.join(str(err).split())[:200]}") from None
    return api, namespace


def _read(client: Any, api: Any, namespace: str, name: str) -> DeploymentFacts:
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment(name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    strategy = deployment.spec.strategy
    max_surge: int | str | None = None
    if strategy is None or strategy.type != "Recreate":  # the API server defaults RollingUpdate with 25%
        rolling = strategy.rolling_update if strategy is not None else None
        max_surge = rolling.max_surge if rolling is not None and rolling.max_surge is not None else "25%"
    hpa_name = hpa_min = hpa_max = None
    autoscaling = client.AutoscalingV2Api(api)
    for hpa in autoscaling.list_namespaced_horizontal_pod_autoscaler(
        namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
    ).items:
        ref = hpa.spec.scale_target_ref
        if ref.kind == "Deployment" and ref.name == name:
            hpa_name, hpa_min, hpa_max = hpa.metadata.name, hpa.spec.min_replicas or 1, hpa.spec.max_replicas
            break
    # The whole selector (matchLabels and matchExpressions), as the Deployment's controller reads it.
    selector = label_selector(deployment.spec.selector.to_dict()) if deployment.spec.selector else ""
    pod_ips: dict[str, str] = {}
    if selector:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        for pod in pods.items:
            for ip in [p.ip for p in pod.status.pod_ips or []] or [pod.status.pod_ip]:
                if ip:
                    pod_ips[ip] = pod.metadata.name
    return DeploymentFacts(namespace, name, deployment.spec.replicas, max_surge, hpa_name, hpa_min, hpa_max, pod_ips)
