"""A thin JSON-in/JSON-out layer over the ``kubernetes`` client's transport (test harness only).

The generated client's typed models get in the way of a harness that patches statuses and reads
arbitrary objects, so this uses the client's configuration loading, auth and connection pool
(``kubernetes.config.new_client_from_config``) and speaks plain dicts on REST paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes import config as kube_config

SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes):
        self.status = status
        self.body = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        try:
            self.reason = json.loads(self.body).get("reason", "")
            message = json.loads(self.body).get("message", self.body)
        except (ValueError, AttributeError):
            self.reason, message = "", self.body
        super().__init__(f"{method} {path}: {status} {message}")


class Kube:
    """``Kube(kubeconfig).get("/api/v1/namespaces")`` → dict; raises KubeError on HTTP errors."""

    def __init__(self, kubeconfig: str | Path, timeout: float = 30.0):
        self.kubeconfig = str(kubeconfig)
        self.timeout = timeout
        cfg = kube_client.Configuration()
        kube_config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 64  # the pod runner's threads share one client
        self.api = kube_client.ApiClient(cfg)

    def close(self) -> None:
        self.api.close()

    def _call(
        self, method: str, path: str, body: Any, query: dict[str, Any] | None, content_type: str | None, timeout: Any
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        query_list = [(k, v) for k, v in (query or {}).items() if v is not None]
        m, url, hdrs, b, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query_list,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(
            m,
            url,
            header_params=hdrs,
            body=b,
            post_params=post,
            _request_timeout=timeout if timeout is not None else self.timeout,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str | None = None,
        timeout: Any = None,
        raw: bool = False,
    ) -> Any:
        resp = self._call(method, path, body, query, content_type, timeout)
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise KubeError(method, path, resp.status, data)
        if raw:
            return data
        return json.loads(data) if data else None

    # conveniences -----------------------------------------------------------------------------
    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_or_none(self, path: str, **kw: Any) -> Any:
        try:
            return self.get(path, **kw)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any], **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any, content_type: str = SMP, **kw: Any) -> Any:
        return self.request("PATCH", path, body, content_type=content_type, **kw)

    def delete(self, path: str, body: dict[str, Any] | None = None, *, missing_ok: bool = True, **kw: Any) -> Any:
        try:
            return self.request("DELETE", path, body, **kw)
        except KubeError as err:
            if missing_ok and err.status == 404:
                return None
            raise

    def items(self, path: str, **query: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(path, query=query or None)["items"]
        return items

    def watch(
        self,
        path: str,
        query: dict[str, Any] | None = None,
        timeout_seconds: int = 60,
        on_open: Callable[[Callable[[], None]], object] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yields watch events ({type, object}); ends when the server closes the watch.

        ``on_open(close)`` receives a function that aborts the watch from another thread.
        """
        q = dict(query or {})
        q.update(watch="true", timeoutSeconds=timeout_seconds)
        resp = self._call("GET", path, None, q, None, (10, timeout_seconds + 10))
        if not 200 <= resp.status < 300:
            raise KubeError("GET", path, resp.status, resp.read())
        raw = resp.response
        if on_open is not None:
            on_open(lambda: _shutdown(raw))
        buf = b""
        try:
            for chunk in raw.stream(4096, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()


def wait_for(predicate: Callable[..., Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Polls ``predicate`` until it returns a truthy value; raises TimeoutError with the last value/error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as err:  # noqa: BLE001 - transient API errors are retried until the deadline
            last = err
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def _shutdown(raw: Any) -> None:
    """Unblocks a thread reading a streaming response (closing alone can wait on the read)."""
    import socket

    try:
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
