"""A one-node Kubernetes cluster from the parts a kind node has, without Docker or a registry.

The control plane is ``tests/harness/controlplane.py``'s, bound on the pod bridge's address; the node is
containerd + runc (Debian's packages) with a CNI bridge on a private pod range, kubelet and kube-proxy
at the pinned Kubernetes version and CoreDNS (no forwarding), all built by ``hack/build-node.sh``.
Images come from ``hack/build-images.sh`` as archives and are imported into containerd: nothing is
pulled (every public registry points at a closed local port).

Pod traffic stays on this machine: pods may reach other pods and this machine's own addresses, and a
firewall chain drops anything they would have forwarded elsewhere; the API server and kubelet listen
only on the bridge address and refuse it from any other interface.

``stop()`` leaves the machine as it found it: every process by PID (containers through their
cgroups, shims by their containerd address), every mount under the work dir and every network
namespace the node made, the bridge, every firewall rule and chain added since ``start()`` (whoever
added it: kube-proxy, the kubelet, us), the kubepods cgroups, and the sysctls the kubelet rewrites.
``HostSnapshot`` is what the teardown test compares.

    python -m tests.harness.cluster    # a node for your own kubectl, until Ctrl-C (hack/node.sh)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import yaml

from .controlplane import (
    ROOT,
    ControlPlane,
    ControlPlaneError,
    find_bin_dir,
    free_port,
    http_ok,
    kill_until_gone,
    spawn_logged,
    stop_process,
    wait_running,
)
from .kube import Kube, wait_for
from .podrunner.network import made_by_a_pod_runner

NODE_NAME = "poolbench-node"
BRIDGE = "pbnode0"
POD_CIDR = "10.245.0.0/24"
GATEWAY = "10.245.0.1"  # the bridge's address: API server, kubelet and CoreDNS listen here
CNI_NETWORK = "poolbench-node"
FORWARD_CHAIN = "POOLBENCH-NODE-FWD"
INPUT_CHAIN = "POOLBENCH-NODE-IN"
#: Written at start, removed by a clean stop: lets the next start reclaim a node whose owner was killed.
STATE_FILE = Path("/run/poolbench-node.json")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
#: Sysctls a node changes: the kubelet rewrites the first three; pods need forwarding for ClusterIPs
#: (DNAT to a pod on the same bridge is routed) and bridged traffic through iptables.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
)
NODE_PROCESSES = (
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "kubelet",
    "kube-proxy",
    "coredns",
    "pause",
)
#: Public registries resolve to a closed local port, so a pull that should not happen fails at once.
BLOCKED_REGISTRIES = (
    "docker.io",
    "registry-1.docker.io",
    "registry.k8s.io",
    "k8s.gcr.io",
    "gcr.io",
    "quay.io",
    "ghcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
)


class NodeError(RuntimeError):
    pass


def run(cmd: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def last_line_of(script: str, env_name: str) -> Path:
    """$env_name, else the last stdout line of ``hack/<script>`` (which builds or reuses its cache)."""
    if os.environ.get(env_name):
        return Path(os.environ[env_name])
    proc = subprocess.run([str(ROOT / "hack" / script)], cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise NodeError(f"hack/{script} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(lines[-1].strip())


# -- what a node leaves behind ----------------------------------------------------------------------
def _processes() -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in NODE_PROCESSES or comm.startswith("containerd-shim"):
            found.add(f"{comm} (pid {entry.name})")
    return found


def _firewall() -> set[str]:
    """Every user chain and rule, v4 and v6, without counters or policies (tables made empty are fine)."""
    lines = set()
    for tool in ("iptables-save", "ip6tables-save"):
        if not shutil.which(tool):
            continue
        table = ""
        for line in run([tool], check=False).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A "):
                lines.add(f"{tool} {table} {line}")
            elif line.startswith(":") and line.split()[1] == "-":  # a user chain (builtins have a policy)
                lines.add(f"{tool} {table} chain {line.split()[0][1:]}")
    return lines


def _links() -> set[str]:
    return {link["ifname"] for link in json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")}


def _mounts() -> set[str]:
    return {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()}


def _netns() -> set[str]:
    return {p.name for p in Path("/run/netns").iterdir()} if Path("/run/netns").is_dir() else set()


def _kubepods_cgroups() -> set[str]:
    return {str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods*")}


SNAPSHOT_SETS = ("processes", "firewall", "links", "mounts", "netns", "cgroups")


@dataclass(frozen=True)
class HostSnapshot:
    """What of the machine a node touches: compared before start and after stop."""

    processes: frozenset[str]
    firewall: frozenset[str]
    links: frozenset[str]
    mounts: frozenset[str]
    netns: frozenset[str]
    cgroups: frozenset[str]
    sysctls: tuple[tuple[str, str], ...]

    @classmethod
    def take(cls) -> HostSnapshot:
        """The host now, without what a k8s tier's pod runner has made: that tier may run beside this
        one (docs/development/tests.md), and its bridges, veths and namespaces come and go while a node
        is up."""

        def own(kind: str, names: set[str]) -> frozenset[str]:
            return frozenset(n for n in names if not made_by_a_pod_runner(kind, n))

        return cls(
            frozenset(_processes()),
            frozenset(_firewall()),
            own("links", _links()),
            own("mounts", _mounts()),
            own("netns", _netns()),
            frozenset(_kubepods_cgroups()),
            tuple(read_sysctls().items()),
        )

    def to_json(self) -> dict[str, Any]:
        return {k: sorted(getattr(self, k)) for k in SNAPSHOT_SETS} | {"sysctls": list(self.sysctls)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostSnapshot:
        return cls(**{k: frozenset(data[k]) for k in SNAPSHOT_SETS}, sysctls=tuple((k, v) for k, v in data["sysctls"]))

    def leftovers(self, after: HostSnapshot) -> list[str]:
        """What ``after`` has that this snapshot had not (or changed sysctls), one line each."""
        found = []
        for kind in SNAPSHOT_SETS:
            found += [f"{kind}: {item}" for item in sorted(getattr(after, kind) - getattr(self, kind))]
        found += [
            f"sysctl {k}: {v} -> {dict(after.sysctls).get(k)}"
            for k, v in self.sysctls
            if dict(after.sysctls).get(k) != v
        ]
        return found


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text().strip()
    return values


def write_sysctl(name: str, value: str) -> None:
    (Path("/proc/sys") / name).write_text(value + "\n")


def node_ready(node: dict[str, Any] | None) -> bool:
    conditions = (node or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def reclaim_stale_node() -> None:
    """Tears down a node whose owner died without stopping it (a killed test run), from what it
    recorded in STATE_FILE at start; refuses while that owner is still alive."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return
    owner = int(state.get("pid", 0))
    if owner and owner != os.getpid() and Path(f"/proc/{owner}").exists():
        raise NodeError(
            f"a node is already up here (process {owner}, work dir {state.get('work_dir')}): "
            "stop it first (Ctrl-C in hack/node.sh)"
        )
    stale = Cluster(
        cp_bin=Path(),
        node_bin=Path(),
        images_dir=Path(),
        work_dir=Path(state["work_dir"]),
        before=HostSnapshot.from_json(state["before"]),
    )
    problems = stale.stop(keep_logs=True)
    if problems:
        raise NodeError(f"a node left by process {owner} could not be reclaimed: {problems}")
    print(f"reclaimed a node left by process {owner} (logs kept in {stale.logs_dir})", flush=True)


# -- the cluster ------------------------------------------------------------------------------------
@dataclass
class Cluster:
    """Control plane + one real node. ``start()`` returns when the Node is Ready and DNS answers."""

    cp_bin: Path
    node_bin: Path
    images_dir: Path
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="poolbench-node-")))
    control_plane: ControlPlane | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    before: HostSnapshot | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    @classmethod
    def from_env(cls) -> Cluster:
        return cls(
            cp_bin=find_bin_dir(),
            node_bin=last_line_of("build-node.sh", "POOLBENCH_NODE_BIN"),
            images_dir=last_line_of("build-images.sh", "POOLBENCH_IMAGES"),
        )

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None, "start() first"
        assert self.control_plane.kubeconfig is not None, "start() first"
        return self.control_plane.kubeconfig

    @property
    def containerd_socket(self) -> Path:
        return self.work_dir / "containerd" / "containerd.sock"

    def images(self) -> list[tuple[Path, str]]:
        """(archive, image name) of every image the build made, from its ``images.txt``."""
        listing = self.images_dir / "images.txt"
        if not listing.exists():
            raise NodeError(f"{listing} is missing: run hack/build-images.sh")
        pairs = []
        for line in listing.read_text().splitlines():
            if line.strip():
                archive, name = line.split()[:2]
                pairs.append((Path(archive) if Path(archive).is_absolute() else self.images_dir / archive, name))
        return pairs

    # -- start ----------------------------------------------------------------------------------------
    def start(self) -> Cluster:
        missing = [b for b in ("kubelet", "kube-proxy", "coredns") if not os.access(self.node_bin / b, os.X_OK)]
        if missing:
            raise NodeError(f"node binaries missing in {self.node_bin}: {', '.join(missing)} (hack/build-node.sh)")
        for tool in ("containerd", "runc", "ctr", "iptables", "ip"):
            if not shutil.which(tool):
                raise NodeError(f"{tool} is not installed (Debian packages: containerd runc iptables iproute2)")
        if not any(Path(d, "bridge").exists() for d in CNI_BIN_DIRS):
            raise NodeError("no CNI plugins (Debian package containernetworking-plugins)")
        reclaim_stale_node()
        if BRIDGE in _links():
            raise NodeError(
                f"bridge {BRIDGE} exists but no node recorded it in {STATE_FILE}: remove it with `ip link del {BRIDGE}`"
            )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.before = HostSnapshot.take()
        STATE_FILE.write_text(
            json.dumps({"pid": os.getpid(), "work_dir": str(self.work_dir), "before": self.before.to_json()})
        )
        try:
            self._timed("network", self._network_up)
            self._timed("control plane", self._control_plane_up)
            self._timed("containerd", self._containerd_up)
            self._timed("images", self._import_images)
            self._timed("coredns, kube-proxy, kubelet", self._node_up)
        except BaseException:
            self.stop()
            raise
        return self

    def _timed(self, what: str, step: Callable[[], object]) -> None:
        t0 = time.monotonic()
        step()
        self.timings[what] = round(time.monotonic() - t0, 1)

    def _network_up(self) -> None:
        for name in SYSCTLS[3:]:
            with contextlib.suppress(OSError):
                write_sysctl(name, "1")
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # Pods may talk to pods and to this machine; whatever they would forward elsewhere is dropped.
        rules = [
            ["-N", FORWARD_CHAIN],
            ["-A", FORWARD_CHAIN, "-s", POD_CIDR, "-d", POD_CIDR, "-j", "RETURN"],
            ["-A", FORWARD_CHAIN, "-s", POD_CIDR, "-j", "DROP"],
            ["-A", FORWARD_CHAIN, "-d", POD_CIDR, "!", "-i", BRIDGE, "-j", "DROP"],
            ["-I", "FORWARD", "1", "-j", FORWARD_CHAIN],
            # The API server, kubelet and CoreDNS listen on the bridge address: only this machine and pods.
            ["-N", INPUT_CHAIN],
            ["-A", INPUT_CHAIN, "-d", GATEWAY, "-i", "lo", "-j", "RETURN"],
            ["-A", INPUT_CHAIN, "-d", GATEWAY, "-i", BRIDGE, "-j", "RETURN"],
            ["-A", INPUT_CHAIN, "-d", GATEWAY, "-j", "DROP"],
            ["-I", "INPUT", "1", "-j", INPUT_CHAIN],
        ]
        for rule in rules:
            run(["iptables", "-w", *rule])
        net_d = self.work_dir / "cni" / "net.d"
        net_d.mkdir(parents=True)
        (net_d / "10-poolbench.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "rangeStart": "10.245.0.10", "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.work_dir / "cni" / "ipam"),
                            },
                        },
                        {"type": "loopback"},
                    ],
                },
                indent=1,
            )
        )

    def _control_plane_up(self) -> None:
        # Its data inside the node's work dir: a reclaimed node's control plane leaves nothing in /tmp either.
        (self.work_dir / "control-plane").mkdir(parents=True, exist_ok=True)
        cp = ControlPlane(
            bin_dir=self.cp_bin, work_dir=self.work_dir / "control-plane", logs_dir=self.logs_dir, bind_address=GATEWAY
        )
        self.control_plane = cp
        certs = cp.certs
        # The API server talks to the kubelet (logs, exec) with the admin client certificate.
        cp.extra_apiserver_args = [
            f"--kubelet-client-certificate={certs.admin_crt}",
            f"--kubelet-client-key={certs.admin_key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        try:
            cp.start()
        except ControlPlaneError as err:
            raise NodeError(str(err)) from err

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.processes[name] = spawn_logged(name, argv, self.logs_dir, self.work_dir)

    def _wait(self, check: Callable[[], object], timeout: float, what: str) -> None:
        wait_running(check, time.monotonic() + timeout, what, self.processes, self.logs_dir, NodeError)

    def _containerd_up(self) -> None:
        base = self.work_dir / "containerd"
        certs_d = base / "certs.d"
        closed = f"https://127.0.0.1:{free_port()}"  # nothing listens there
        for registry in BLOCKED_REGISTRIES:
            (certs_d / registry).mkdir(parents=True)
            (certs_d / registry / "hosts.toml").write_text(
                f'server = "{closed}"\n[host."{closed}"]\n  capabilities = ["pull", "resolve"]\n'
            )
        cni_bin = next(d for d in CNI_BIN_DIRS if Path(d, "bridge").exists())
        config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{self.work_dir / "cni" / "net.d"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
"""
        (base / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", f"--config={base / 'config.toml'}"])
        self._wait(
            lambda: run(["ctr", f"--address={self.containerd_socket}", "version"]).returncode == 0, 60, "containerd"
        )

    def ctr(self, *args: str, timeout: float = 600) -> str:
        return run(["ctr", f"--address={self.containerd_socket}", "-n", "k8s.io", *args], timeout=timeout).stdout

    def _import_images(self) -> None:
        for archive, name in self.images():
            self.ctr("images", "import", "--no-unpack", str(archive))
            if name not in self.ctr("images", "ls", "-q"):
                raise NodeError(f"{archive} did not import as {name}")

    def _node_up(self) -> None:
        p = self.ports
        for name in ("proxy_healthz", "proxy_metrics", "kubelet_healthz", "dns_health", "dns_ready"):
            p[name] = free_port(set(p.values()))
        kubeconfig = str(self.kubeconfig)
        corefile = self.work_dir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {GATEWAY}
    errors
    health 127.0.0.1:{p["dns_health"]}
    ready 127.0.0.1:{p["dns_ready"]}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loop
    loadbalance
}}
""")
        self._spawn("coredns", [str(self.node_bin / "coredns"), "-conf", str(corefile)])

        proxy_config = self.work_dir / "kube-proxy.yaml"
        proxy_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": kubeconfig},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "bindAddress": GATEWAY,
                    "healthzBindAddress": f"127.0.0.1:{p['proxy_healthz']}",
                    "metricsBindAddress": f"127.0.0.1:{p['proxy_metrics']}",
                    # Leave the machine's conntrack and route_localnet sysctls alone.
                    "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
                    "iptables": {"localhostNodePorts": False},
                }
            )
        )
        self._spawn("kube-proxy", [str(self.node_bin / "kube-proxy"), f"--config={proxy_config}"])

        kubelet_dir = self.work_dir / "kubelet"
        kubelet_dir.mkdir()
        kubelet_config = self.work_dir / "kubelet.yaml"
        assert self.control_plane is not None
        kubelet_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": GATEWAY,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": p["kubelet_healthz"],
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": False},
                        "x509": {"clientCAFile": str(self.control_plane.certs.ca_crt)},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "resolvConf": "",
                    "clusterDNS": [GATEWAY],
                    "clusterDomain": "cluster.local",
                    "podLogsDir": str(self.work_dir / "pod-logs"),
                    "staticPodPath": "",
                    "registerNode": True,
                    "serializeImagePulls": False,
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                    "maxPods": 110,
                    "syncFrequency": "10s",
                    "nodeStatusUpdateFrequency": "4s",
                }
            )
        )
        self._spawn(
            "kubelet",
            [
                str(self.node_bin / "kubelet"),
                f"--config={kubelet_config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={kubelet_dir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
        )
        self._wait(lambda: http_ok(f"http://127.0.0.1:{p['proxy_healthz']}/healthz"), 60, "kube-proxy healthz")
        self._wait(lambda: http_ok(f"http://127.0.0.1:{p['dns_ready']}/ready"), 60, "CoreDNS ready")
        assert self.control_plane is not None
        kube = self.control_plane.client()  # one client for the whole wait
        try:
            self._wait(
                lambda: node_ready(kube.get_or_none(f"/api/v1/nodes/{NODE_NAME}")), 120, f"Node {NODE_NAME} Ready"
            )
        finally:
            kube.close()

    # -- stop -----------------------------------------------------------------------------------------
    def stop(self, keep_logs: bool = False) -> list[str]:
        """Tears everything down; returns what could not be removed (empty when clean)."""
        if self.stopped:
            return []
        self.stopped = True
        problems: list[str] = []

        def attempt(what: str, action: Callable[..., object]) -> None:
            try:
                action()
            except Exception as err:  # noqa: BLE001 - go on tearing down, report at the end
                problems.append(f"{what}: {err}")

        for name in ("kubelet", "kube-proxy", "coredns"):
            if name in self.processes:
                attempt(f"stop {name}", lambda n=name: stop_process(self.processes.pop(n), grace=5))
        attempt("kill containers", self._kill_containers)
        attempt("kill shims", self._kill_shims)
        if "containerd" in self.processes:
            attempt("stop containerd", lambda: stop_process(self.processes.pop("containerd"), grace=5))
        attempt("unmount", self._unmount_all)
        attempt("network namespaces", self._remove_netns)
        attempt("bridge", lambda: run(["ip", "link", "del", BRIDGE], check=False))
        attempt("firewall", self._restore_firewall)
        attempt("cgroups", self._remove_cgroups)
        attempt("sysctls", self._restore_sysctls)
        attempt("cni results", self._remove_cni_cache)
        attempt("container log links", self._remove_log_links)
        if self.control_plane is not None:
            control_plane = self.control_plane
            attempt("control plane", lambda: control_plane.stop(keep_logs=True))
        if self.before is not None:
            problems += self.before.leftovers(HostSnapshot.take())
        if not problems:
            STATE_FILE.unlink(missing_ok=True)
        self._remove_work_dir(keep_logs=keep_logs or bool(problems))
        return problems

    def _remove_work_dir(self, keep_logs: bool) -> None:
        """Remove the node's work directory, or everything in it but the logs (the image stores are large)."""
        if not keep_logs:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return
        for child in self.work_dir.iterdir() if self.work_dir.exists() else []:
            if child != self.logs_dir:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def _kill_containers(self) -> None:
        """SIGKILL every process in the kubepods cgroups (containers and pause), until none is left."""

        def pids() -> set[int]:
            # os.walk, not Path.glob("**"): a container's cgroup that goes away while it is walked is
            # skipped (walk ignores a directory it can no longer list), where glob raises.
            found: set[int] = set()
            for top in Path("/sys/fs/cgroup/pids").glob("kubepods*"):
                for directory, _, files in os.walk(top):
                    if "cgroup.procs" in files:
                        with contextlib.suppress(OSError):
                            found |= {int(x) for x in Path(directory, "cgroup.procs").read_text().split()}
            return found

        kill_until_gone(pids, "container processes")

    def _kill_shims(self) -> None:
        """The shims by their containerd address, and anything else still running from the work dir
        (a node whose test process was killed: its components die with it, but not always)."""
        mine = str(self.work_dir).encode()
        # The control plane (its data is in the work dir too) is stopped in order later, not killed here.
        control_plane = {p.pid for p in self.control_plane.processes.values()} if self.control_plane else set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in {os.getpid(), *control_plane}:
                continue
            with contextlib.suppress(OSError):
                if mine in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any("containerd-shim" in p for p in _processes()) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _unmount_all(self) -> None:
        prefix = str(self.work_dir) + "/"
        for _ in range(5):
            mine = [m for m in _mounts() if m.startswith(prefix)]
            if not mine:
                return
            for mount in sorted(mine, key=len, reverse=True):
                run(["umount", mount], check=False)
        leftover = [m for m in _mounts() if m.startswith(prefix)]
        for mount in sorted(leftover, key=len, reverse=True):
            run(["umount", "-l", mount], check=False)

    def _remove_netns(self) -> None:
        assert self.before is not None
        for name in _netns() - self.before.netns:
            if name.startswith("cni-"):
                run(["ip", "netns", "delete", name], check=False)

    def _restore_firewall(self) -> None:
        """Deletes every rule, then every user chain, added since start (kube-proxy's, the kubelet's, ours)."""
        assert self.before is not None
        for _ in range(3):
            added = _firewall() - self.before.firewall
            if not added:
                return
            for line in sorted(a for a in added if " -A " in a):
                tool, table, rule = line.split(" ", 2)
                binary = tool.replace("-save", "")
                run([binary, "-w", "-t", table, "-D", *_split_rule(rule)[1:]], check=False)
            for line in sorted(a for a in added if " chain " in a):
                tool, table, _, chain = line.split(" ", 3)
                binary = tool.replace("-save", "")
                run([binary, "-w", "-t", table, "-F", chain], check=False)
                run([binary, "-w", "-t", table, "-X", chain], check=False)

    def _remove_cgroups(self) -> None:
        for top in sorted(_kubepods_cgroups() - (self.before.cgroups if self.before else set())):
            for path in sorted(Path(top).glob("**/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()

    def _restore_sysctls(self) -> None:
        assert self.before is not None
        for name, value in self.before.sysctls:
            if read_sysctls().get(name) != value:
                write_sysctl(name, value)

    def _remove_cni_cache(self) -> None:
        for path in Path("/var/lib/cni/results").glob(f"{CNI_NETWORK}-*"):
            path.unlink(missing_ok=True)

    def _remove_log_links(self) -> None:
        links = Path("/var/log/containers")
        for link in links.glob("*.log") if links.is_dir() else []:
            if link.is_symlink() and os.readlink(link).startswith(str(self.work_dir)):
                link.unlink()


@dataclass
class Teardown:
    """A node's teardown, observed: the host before the node, during (a pod running), and after ``stop()``."""

    cluster: Cluster
    before: HostSnapshot
    during: HostSnapshot
    problems: list[str]
    after: HostSnapshot


def observed_teardown(cluster: Cluster, kube: Kube, keep_logs: bool = False) -> Teardown:
    """Runs a pod (so there is something to tear down), stops the node and snapshots the host around it."""
    assert cluster.before is not None, "start() first"
    kube.create(
        "/api/v1/namespaces/default/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "last"},
            "spec": {"containers": [{"name": "c", "image": "localhost/pause:3.10", "imagePullPolicy": "Never"}]},
        },
    )
    wait_for(
        lambda: kube.get("/api/v1/namespaces/default/pods/last")["status"].get("phase") == "Running",
        120,
        what="a pod to tear down",
    )
    during = HostSnapshot.take()
    problems = cluster.stop(keep_logs=keep_logs)
    return Teardown(cluster=cluster, before=cluster.before, during=during, problems=problems, after=HostSnapshot.take())


def _split_rule(rule: str) -> list[str]:
    """An ``iptables-save`` rule line as argv (quoted comments stay one word)."""
    import shlex

    return shlex.split(rule)


def main() -> None:  # pragma: no cover - a contributor's tool
    cluster = Cluster.from_env()
    print("starting a one-node cluster (control plane, containerd, kube-proxy, CoreDNS, kubelet)...", flush=True)
    cluster.start()
    print(f"ready in {sum(cluster.timings.values()):.0f}s {cluster.timings}")
    print(f"export KUBECONFIG={cluster.kubeconfig}\nCtrl-C (or SIGTERM, SIGHUP) tears it down.", flush=True)

    def interrupted(_sig: int, _frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    # Installed explicitly: a shell's background job inherits SIGINT ignored, and Python keeps that.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    problems = cluster.stop()
    print("torn down" + ("" if not problems else ", but left:\n  " + "\n  ".join(problems)))
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
