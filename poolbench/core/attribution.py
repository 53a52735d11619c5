"""Whose connections are these? The client backends of a live server, split into the app's (by the
pod whose IP they come from, or by a match rule when a proxy or pooler hides the pod) and the other
tenants'. Pure: the rows come from ``poolbench.db.live``, the pod IPs from the cluster or from nowhere.

A backend from a pod's IP is that pod's whatever its role or name: the pod opened it. A backend from
any other address is the app's only when the match rule picks it (same role, application_name,
database): the app behind a proxy or a pooler reaches the server from the pooler's address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

#: The owner of a backend whose role is not visible.
UNKNOWN_ROLE = "?"
#: The fields ``MatchRule`` compares, as ``--match`` names them.
MATCH_FIELDS = ("usename", "application_name", "datname")


@dataclass(frozen=True)
class Backend:
    """One client backend row of pg_stat_activity."""

    pid: int
    usename: str | None
    application_name: str
    datname: str | None
    client_addr: str | None  # None for a Unix socket
    state: str | None  # 'active', 'idle', 'idle in transaction', ...; None when not visible
    backend_age_seconds: float  # now - backend_start, server side
    state_age_seconds: float | None  # now - state_change

    @property
    def owner(self) -> tuple[str, str]:
        """(role, application_name): who a tenant's connection belongs to, as the tables group it."""
        return (self.usename or UNKNOWN_ROLE, self.application_name or "")

    @property
    def kept_idle(self) -> bool:
        """Open and idle: a pool's kept connection (a "ghost")."""
        return self.state == "idle"


@dataclass(frozen=True)
class MatchRule:
    """How to recognise the app's backends when client_addr is not a pod IP (proxy, pooler)."""

    usename: str | None = None
    application_name: str | None = None
    datname: str | None = None

    @property
    def empty(self) -> bool:
        return self.usename is None and self.application_name is None and self.datname is None

    def matches(self, backend: Backend) -> bool:
        """Every given field equal; a rule with no field matches nothing (never "everything": an empty
        rule would count every tenant as the app)."""
        if self.empty:
            return False
        return (
            (self.usename is None or backend.usename == self.usename)
            and (self.application_name is None or backend.application_name == self.application_name)
            and (self.datname is None or backend.datname == self.datname)
        )

    def describe(self) -> str:
        """'usename=app,datname=shop': the rule as ``--match`` takes it."""
        return ",".join(f"{name}={value}" for name in MATCH_FIELDS if (value := getattr(self, name)) is not None)


class MatchError(ValueError):
    """A ``--match`` text that names an unknown field or gives one twice or without a value."""


def parse_match(text: str) -> MatchRule:
    """'usename=app,application_name=x,datname=d' → MatchRule; MatchError names the bad part."""
    values: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise MatchError(f"{part.strip()!r} is not KEY=VALUE (keys: {', '.join(MATCH_FIELDS)})")
        if name not in MATCH_FIELDS:
            raise MatchError(f"unknown key {name!r} (keys: {', '.join(MATCH_FIELDS)})")
        if name in values:
            raise MatchError(f"{name} is given twice")
        if not value:
            raise MatchError(f"{name} has no value")
        values[name] = value
    return MatchRule(**values)


@dataclass(frozen=True)
class Attribution:
    """The client backends of one read, by whose they are."""

    by_pod: dict[str, tuple[Backend, ...]]  # pod name -> backends from that pod's IP (pods with none: ())
    app_unplaced: tuple[Backend, ...]  # matched by the rule but from no known pod IP
    others: tuple[Backend, ...]  # other tenants

    @property
    def app_total(self) -> int:
        """The app's backends: every pod's and the unplaced ones."""
        return sum(len(b) for b in self.by_pod.values()) + len(self.app_unplaced)

    @property
    def total(self) -> int:
        """Every client backend attributed (the app's and the others')."""
        return self.app_total + len(self.others)

    def others_by_owner(self) -> dict[tuple[str, str], int]:
        """The other tenants' backends, counted by (role or '?', application_name or '')."""
        return dict(Counter(b.owner for b in self.others))


def attribute(
    backends: Iterable[Backend],
    pod_ips: Mapping[str, str],
    match: MatchRule | None,
    exclude_pids: Collection[int] = (),
) -> Attribution:
    """Split ``backends`` by pod (``pod_ips``: pod IP -> pod name), the rule's unplaced ones and the
    others; ``exclude_pids`` (the reading session itself) are in none of them."""
    by_pod: dict[str, list[Backend]] = {name: [] for name in pod_ips.values()}
    unplaced: list[Backend] = []
    others: list[Backend] = []
    for backend in backends:
        if backend.pid in exclude_pids:
            continue
        pod = pod_ips.get(backend.client_addr) if backend.client_addr is not None else None
        if pod is not None:
            by_pod[pod].append(backend)
        elif match is not None and match.matches(backend):
            unplaced.append(backend)
        else:
            others.append(backend)
    return Attribution({pod: tuple(b) for pod, b in by_pod.items()}, tuple(unplaced), tuple(others))


def client_group(backend: Backend) -> str:
    """A group label without pods (a local watch): 'app@127.0.0.1 pgbench', 'app@local' for a socket."""
    name = f" {backend.application_name}" if backend.application_name else ""
    return f"{backend.usename or UNKNOWN_ROLE}@{backend.client_addr or 'local'}{name}"


def attribute_by_client(
    backends: Iterable[Backend], match: MatchRule | None, exclude_pids: Collection[int] = ()
) -> Attribution:
    """Where there are no pods: the groups (client address, role, application_name) stand in for them.
    With a rule, the groups are the matched backends' and the rest are the others; without one, every
    backend is in a group and there are no others."""
    groups: dict[str, list[Backend]] = {}
    others: list[Backend] = []
    for backend in backends:
        if backend.pid in exclude_pids:
            continue
        if match is None or match.matches(backend):
            groups.setdefault(client_group(backend), []).append(backend)
        else:
            others.append(backend)
    return Attribution({g: tuple(b) for g, b in sorted(groups.items())}, (), tuple(others))
