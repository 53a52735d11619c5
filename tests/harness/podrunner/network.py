"""The pod network: one bridge per runner, one network namespace + veth per pod.

Network namespaces are the only isolation the pod runner gives pods, and the one they need: every
pod gets its own IP from 10.244.N.0/24 on a bridge whose host side is 10.244.N.1, so the host
(tests, operator) reaches pod IPs, pods reach each other and the host, and the API server's pod
proxy works (it refuses loopback pod IPs). Each pod's ``/etc/netns/<netns>/`` holds the hosts and
resolv.conf that ``ip netns exec`` bind-mounts for it.

The subnet index N is claimed under a lock file in ``/run`` so that concurrent test sessions on one
machine get different subnets, and a dead session's bridge, veths and namespaces are reclaimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import threading
from pathlib import Path

from ..controlplane import kill_until_gone
from .util import pid_alive, run

STATE_DIR = Path("/run/poolbench-podrunner")
LOCK_FILE = Path("/run/poolbench-podrunner.lock")
#: What any pod runner (any subnet index N) makes on the host: its bridge, the veths' host ends, the
#: pods' network namespaces (``ip netns`` mounts each at /run/netns/<name>). A node started beside
#: a k8s tier leaves these out of its snapshots of the host.
RUNNER_LINK = re.compile(r"pbbr\d+|pb\d+h\d+")
RUNNER_NETNS = re.compile(r"pb\d+-.+")


def made_by_a_pod_runner(kind: str, name: str) -> bool:
    """Whether the host's ``kind`` ("links", "netns" or "mounts") entry ``name`` is a pod runner's."""
    if kind == "links":
        return RUNNER_LINK.fullmatch(name) is not None
    if kind == "netns":
        return RUNNER_NETNS.fullmatch(name) is not None
    if kind == "mounts":
        if name == "/run/netns":
            return True  # iproute2's bind mount of the directory onto itself, made once and kept by design
        return name.startswith("/run/netns/") and RUNNER_NETNS.fullmatch(name.removeprefix("/run/netns/")) is not None
    return False


class PodNetwork:
    """A bridge ``pbbr<N>`` with 10.244.N.1/24 and one netns + veth per pod.

    N is chosen under a file lock so that concurrent test sessions on one machine don't collide;
    leftovers of a dead session (its owner PID gone) are removed first.
    """

    def __init__(self) -> None:
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
    with contextlib.suppress(RuntimeError):  # best effort: the netns is deleted anyway
        kill_until_gone(lambda: netns_pids(name), f"processes of netns {name}")


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
