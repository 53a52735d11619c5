"""The operator's settings, read from its environment in one place (crate-operator style).

Every knob the Deployment or chart may set is here, with its default; handlers, the driver and the
Kubernetes edge take their values from ``Config``, never from ``os.environ`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from poolbench.core.children import DEFAULT_OPERATOR_NAMESPACE, DEFAULT_WORKLOAD_IMAGE

#: Where the operator reads its own namespace when it runs in a pod.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MAX_PORT = 65535


class ConfigError(ValueError):
    """A setting in the operator's environment is malformed."""


@dataclass(frozen=True)
class Config:
    #: Image of the workload Deployment's pods (POOLBENCH_WORKLOAD_IMAGE).
    workload_image: str = DEFAULT_WORKLOAD_IMAGE
    #: Benchmarks that may run at once; each holds one executor thread (POOLBENCH_MAX_CONCURRENT).
    max_concurrent_benchmarks: int = 64
    #: Seconds a watch request stays open on the API server (POOLBENCH_WATCH_TIMEOUT).
    watch_timeout_seconds: int = 300
    #: How the operator reaches each benchmark's Postgres (POOLBENCH_POSTGRES_ADDRESS): ``service``
    #: (the Service's DNS name, in the cluster), ``pod-ip`` (routable pod IPs), or ``HOST:PORT``.
    postgres_address: str = "service"
    #: The operator's namespace outside a pod, where its key Secret lives (POOLBENCH_NAMESPACE).
    namespace: str = DEFAULT_OPERATOR_NAMESPACE
    #: Milliseconds between two looks at a step's replicas (their pods and live metrics) and at a
    #: starting PostgreSQL or PgBouncer (POOLBENCH_POLL_MS): how late the operator may notice that a step
    #: ended or a server is up. Each look is one pod list plus one metrics read per replica.
    poll_ms: int = 500
    #: The port of the operator's own Prometheus ``/metrics`` (POOLBENCH_METRICS_PORT; the chart's
    #: container port ``metrics``; kopf's liveness endpoint has 8080). 0: not served.
    metrics_port: int = 8000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        defaults = cls()

        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
            return value

        address = env.get("POOLBENCH_POSTGRES_ADDRESS") or defaults.postgres_address
        if address not in ("service", "pod-ip"):
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"POOLBENCH_POSTGRES_ADDRESS must be service, pod-ip or HOST:PORT, got {address!r}")
        raw_port = env.get("POOLBENCH_METRICS_PORT", "")
        metrics_port = defaults.metrics_port
        if raw_port.isdigit() and int(raw_port) <= MAX_PORT:
            metrics_port = int(raw_port)
        elif raw_port:
            raise ConfigError(
                f"POOLBENCH_METRICS_PORT must be a port (1-{MAX_PORT}) or 0 (not served), got {raw_port!r}"
            )
        return cls(
            workload_image=env.get("POOLBENCH_WORKLOAD_IMAGE") or defaults.workload_image,
            max_concurrent_benchmarks=integer("POOLBENCH_MAX_CONCURRENT", defaults.max_concurrent_benchmarks),
            watch_timeout_seconds=integer("POOLBENCH_WATCH_TIMEOUT", defaults.watch_timeout_seconds),
            postgres_address=address,
            namespace=env.get("POOLBENCH_NAMESPACE") or defaults.namespace,
            poll_ms=integer("POOLBENCH_POLL_MS", defaults.poll_ms),
            metrics_port=metrics_port,
        )

    @property
    def poll_seconds(self) -> float:
        return self.poll_ms / 1000

    def operator_namespace(self) -> str:
        """Its own namespace in a pod, else the configured one."""
        try:
            with open(SERVICE_ACCOUNT_NAMESPACE) as fh:
                return fh.read().strip() or self.namespace
        except OSError:
            return self.namespace
