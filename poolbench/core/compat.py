"""Will the app survive transaction pooling? The compatibility probe's reasoning (pure).

Before a pooled variant's load, the probe (``poolbench.db.compat``) runs the app's statements through
the variant's pooler from three plain clients taking turns so that they share server connections, and
reads each client's session as the server keeps it (``SessionState``: its backend's pid, the settings
changed in the session, prepared statements, LISTEN channels, temporary tables, WITH HOLD cursors and
advisory locks):

1. client A connects (``fresh``) and runs ``workload.onConnect``, each statement on its own (``connected``);
2. client B opens a transaction (``other_first``) and keeps it open, so its server connection stays taken;
3. client A opens its next transaction (``own_next``), runs ``workload.transaction`` (``own_done``) and
   commits: in transaction mode it landed on another server connection than its onConnect's;
4. client C opens a transaction (``other_after``): the only idle server connection is the one A's
   transaction just left; then the probe reads ``pg_locks`` directly (``lock_holders``: by whom).

A finding is what the server showed, never a guess from the SQL: state of A's seen in B's or C's session
(leaked, shared, duplicated), or missing from A's own next transaction (lost, missing). In session mode
each client keeps its own server connection, so the same run shows nothing. The driver's own prepared
statements (psycopg 3's after ``prepare_threshold`` runs, asyncpg's statement cache) are checked by two
clients of the driver taking turns (``DriverRun``): the server's errors are the evidence. The statement
named in a finding is the first that mentions the state's name (only for the report).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .contracts.drivers import Driver
from .results import Compatibility, CompatibilityFinding, FindingKind
from .spec import PoolBenchmarkSpec, PoolerSpec
from .words import counted

#: PgBouncer tracks protocol-level prepared statements from this version on (max_prepared_statements).
PREPARED_STATEMENTS_SINCE = (1, 21)
#: SQLSTATEs of a prepared statement that exists where it should not, or is missing where it should be.
DUPLICATE_PREPARED_STATEMENT = "42P05"
INVALID_STATEMENT_NAME = "26000"


@dataclass(frozen=True)
class ClientTarget:
    """How a client of the app logs in through the variant's pooler (libpq's keywords)."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ProbeRequest:
    """What the probe runs, and through what: the app's statements, driver and the pooler's mode."""

    pool_mode: str
    pool_size: int
    on_connect: tuple[str, ...]
    transaction: tuple[str, ...]
    driver: Driver
    driver_options: str


def probe_request(spec: PoolBenchmarkSpec, pooler: PoolerSpec) -> ProbeRequest:
    """The probe of ``spec``'s app (as the variant sees it) through ``pooler``."""
    workload = spec.workload
    return ProbeRequest(
        pool_mode=pooler.pool_mode,
        pool_size=pooler.default_pool_size,
        on_connect=tuple(workload.on_connect),
        transaction=tuple(workload.transaction_statements()),
        driver=workload.driver,
        driver_options=workload.driver_options,
    )


@dataclass(frozen=True)
class SessionState:
    """One client's server session as the server showed it inside one of its transactions."""

    pid: int
    settings: Mapping[str, str] = field(default_factory=dict)  # pg_settings whose source is the session
    prepared: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    temp_tables: frozenset[str] = frozenset()
    hold_cursors: frozenset[str] = frozenset()
    advisory_locks: frozenset[str] = frozenset()  # the lock's key, as pg_advisory_lock takes it

    def minus(self, before: SessionState) -> SessionState:
        """What this session has that ``before`` had not (a setting: a changed value)."""
        return SessionState(
            pid=self.pid,
            settings={k: v for k, v in self.settings.items() if before.settings.get(k) != v},
            prepared=self.prepared - before.prepared,
            channels=self.channels - before.channels,
            temp_tables=self.temp_tables - before.temp_tables,
            hold_cursors=self.hold_cursors - before.hold_cursors,
            advisory_locks=self.advisory_locks - before.advisory_locks,
        )


@dataclass(frozen=True)
class LockHolder:
    """An advisory lock in ``pg_locks``, with the backend holding it as ``pg_stat_activity`` shows it."""

    key: str
    pid: int
    application_name: str
    state: str


@dataclass(frozen=True)
class ProbeError:
    """A statement the server refused during the probe."""

    client: str
    statement: str
    sqlstate: str
    message: str


@dataclass(frozen=True)
class DriverRun:
    """Two clients of the app's driver (through SQLAlchemy, configured as the workload is) taking turns."""

    driver: str
    options: str  # spec.workload.driverOptions
    pooling_applied: bool  # the driver's pooling options were set (driverOptions pooling, transaction mode)
    statements: int  # statements each client ran
    pids: tuple[int, ...]  # the backends they ran on
    errors: tuple[ProbeError, ...] = ()


@dataclass(frozen=True)
class ProbeTrace:
    """Everything the probe read, in the order of the module's steps (None: that step could not run)."""

    pool_mode: str
    on_connect: tuple[str, ...]
    transaction: tuple[str, ...]
    fresh: SessionState
    connected: SessionState
    other_first: SessionState
    own_next: SessionState | None
    own_done: SessionState | None
    other_after: SessionState | None
    lock_holders: tuple[LockHolder, ...] = ()
    errors: tuple[ProbeError, ...] = ()
    driver: DriverRun | None = None
    pooler_version: str = ""
    notes: tuple[str, ...] = ()


#: Per kind of session state: (attribute, what it is, kind when another client sees it, kind when lost).
STATE_KINDS: tuple[tuple[str, str, FindingKind, FindingKind], ...] = (
    ("prepared", "prepared statement", "preparedStatementDuplicated", "preparedStatementMissing"),
    ("advisory_locks", "session advisory lock", "advisoryLockHeld", "advisoryLockHeld"),
    ("channels", "LISTEN registration", "listenLost", "listenLost"),
    ("temp_tables", "temporary table", "tempTableShared", "tempTableShared"),
    ("hold_cursors", "WITH HOLD cursor", "holdCursorShared", "holdCursorShared"),
)

SESSION_MODE_FIX = "or connect this client through a session-mode pool (or a direct URL)"


def state_fix(kind: FindingKind, item: str, on_connect: bool) -> str:
    """The fix for one finding about session state (settings have their own, ``setting_fix``)."""
    if kind in ("preparedStatementDuplicated", "preparedStatementMissing"):
        return (
            f"PREPARE and DEALLOCATE {item} within one transaction, or run the statement unprepared (PgBouncer's"
            f" max_prepared_statements, 1.21+, tracks the protocol's prepared statements, not SQL PREPARE); "
            + SESSION_MODE_FIX
        )
    if kind == "advisoryLockHeld":
        return (
            f"take it with pg_advisory_xact_lock({item}) (or pg_try_advisory_xact_lock), released when the"
            " transaction ends; a client that needs a session lock (migrations) connects with a direct URL or"
            " through a session-mode pool"
        )
    if kind == "listenLost":
        return (
            "LISTEN on a connection of its own with a direct URL, or through a session-mode pool: a listener"
            " needs its own server session"
        )
    if kind == "tempTableShared":
        where = "in each transaction" if on_connect else "in the transaction"
        return f"CREATE TEMP TABLE {item} … ON COMMIT DROP {where}, " + SESSION_MODE_FIX
    return f"declare {item} WITHOUT HOLD and close it before the commit, " + SESSION_MODE_FIX


def setting_fix(name: str, on_connect: bool) -> str:
    if on_connect:
        return (
            f"set it in each transaction (SET LOCAL {name} = … at its start), or for the role (ALTER ROLE … SET"
            f" {name} = …), " + SESSION_MODE_FIX
        )
    return f"SET LOCAL {name} = … (or set_config('{name}', …, true)): the setting ends with the transaction"


def driver_fix(driver: str, pooler_version: str) -> str:
    """The driver option that keeps its prepared statements off a shared server connection."""
    if driver == "asyncpg":
        fix = (
            "configure asyncpg for pooling: create_async_engine('postgresql+asyncpg://…?prepared_statement_cache_size=0',"
            " connect_args={'statement_cache_size': 0, 'prepared_statement_name_func': lambda:"
            " f'__asyncpg_{uuid4()}__'}) (spec.workload.driverOptions: pooling)"
        )
    elif driver == "psycopg":
        fix = (
            "configure psycopg for pooling: connect_args={'prepare_threshold': None} (never prepare;"
            " spec.workload.driverOptions: pooling)"
        )
    else:
        fix = "turn the driver's server-side prepared statements off"
    version = parse_version(pooler_version)
    if version is not None and version < PREPARED_STATEMENTS_SINCE:
        return fix + f"; PgBouncer {version[0]}.{version[1]} cannot track them (max_prepared_statements needs 1.21+)"
    return fix + "; or set max_prepared_statements on PgBouncer 1.21+"


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of "PgBouncer 1.18.0 …" or "1.18.0"; None when it names none."""
    for word in text.replace("PgBouncer", " ").split():
        parts = word.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
    return None


#: A word the statement that made each kind of state has (with the state's name), to name it in a finding.
STATEMENT_WORDS = {
    "prepared": "prepare",
    "advisory_locks": "advisory",
    "channels": "listen",
    "temp_tables": "temp",
    "hold_cursors": "hold",
}


def statement_for(item: str, statements: tuple[str, ...], word: str = "") -> str:
    """The app's statement that names ``item`` (and ``word``), the first; the only one when there is one."""
    needle = item.lower().strip('"')
    for statement in statements:
        text = statement.lower()
        if needle and needle in text and word in text:
            return statement
    return statements[0] if len(statements) == 1 else ""


def holder_text(key: str, holders: tuple[LockHolder, ...]) -> str:
    found = [h for h in holders if h.key == key]
    return "".join(
        f"; pg_locks: held by backend {h.pid} ({h.state or 'no state'}, application_name {h.application_name!r})"
        for h in found
    )


def settings_findings(trace: ProbeTrace) -> list[CompatibilityFinding]:
    found: list[CompatibilityFinding] = []
    fresh, connected = trace.fresh, trace.connected
    for name, value in sorted(connected.minus(fresh).settings.items()):
        statement = statement_for(name, trace.on_connect)
        default = fresh.settings.get(name, "its default")
        other = trace.other_first
        if other.settings.get(name) == value:
            found.append(
                CompatibilityFinding(
                    kind="sessionSettingLeaked",
                    statement=statement,
                    evidence=f"client A set {name} = {value} on connect (backend {connected.pid}); client B's"
                    f" transaction then ran on backend {other.pid} and saw {name} = {value}, not {default}",
                    fix=setting_fix(name, on_connect=True),
                )
            )
        own = trace.own_next
        if own is not None and own.settings.get(name) != value:
            found.append(
                CompatibilityFinding(
                    kind="sessionSettingLost",
                    statement=statement,
                    evidence=f"client A set {name} = {value} on connect (backend {connected.pid}); its next"
                    f" transaction ran on backend {own.pid}, where {name} = {own.settings.get(name, default)}",
                    fix=setting_fix(name, on_connect=True),
                )
            )
    if trace.own_next is None or trace.own_done is None or trace.other_after is None:
        return found
    changed = trace.own_done.minus(trace.own_next).settings
    for name, value in sorted(changed.items()):
        other = trace.other_after
        if other.settings.get(name) == value and trace.own_next.settings.get(name) != value:
            found.append(
                CompatibilityFinding(
                    kind="sessionSettingLeaked",
                    statement=statement_for(name, trace.transaction),
                    evidence=f"client A's transaction set {name} = {value} on backend {trace.own_done.pid} and"
                    f" committed; client C's transaction then ran on backend {other.pid} and saw {name} ="
                    f" {value}, not {trace.own_next.settings.get(name, 'its default')}",
                    fix=setting_fix(name, on_connect=False),
                )
            )
    return found


def state_findings(trace: ProbeTrace) -> list[CompatibilityFinding]:
    """Prepared statements, advisory locks, LISTEN, temporary tables and cursors: one finding per item,
    with every piece of evidence for it."""
    found: list[CompatibilityFinding] = []
    made_on_connect = trace.connected.minus(trace.fresh)
    made_in_transaction = transaction_state(trace)
    for attribute, what, seen_kind, lost_kind in STATE_KINDS:
        for item in sorted(getattr(made_on_connect, attribute)):
            seen: list[str] = []
            other = trace.other_first
            if item in getattr(other, attribute):
                seen.append(f"client B's transaction then ran on backend {other.pid} and found it there")
            own = trace.own_next
            lost = own is not None and item not in getattr(own, attribute)
            if lost and own is not None:
                seen.append(f"client A's next transaction ran on backend {own.pid}, which has no such {what}")
            seen += [
                f"client A's statement failed there: {e.message}" for e in trace.errors if item_in(item, e.message)
            ]
            if not seen:
                continue
            kind = seen_kind if item in getattr(other, attribute) else lost_kind
            found.append(
                CompatibilityFinding(
                    kind=kind,
                    statement=statement_for(item, trace.on_connect, STATEMENT_WORDS[attribute]),
                    evidence=f"client A's {what} {item} was made on connect (backend {trace.connected.pid}); "
                    + "; ".join(seen)
                    + (holder_text(item, trace.lock_holders) if attribute == "advisory_locks" else ""),
                    fix=state_fix(kind, item, on_connect=True),
                )
            )
        if made_in_transaction is None or trace.other_after is None:
            continue
        for item in sorted(getattr(made_in_transaction, attribute)):
            other = trace.other_after
            if item not in getattr(other, attribute):
                continue
            ended = "its transaction ended" if attribute != "advisory_locks" else "its transaction ended, still held"
            found.append(
                CompatibilityFinding(
                    kind=seen_kind,
                    statement=statement_for(item, trace.transaction, STATEMENT_WORDS[attribute]),
                    evidence=f"client A's transaction made {what} {item} on backend {made_in_transaction.pid} and"
                    f" {ended}; client C's transaction then ran on backend {other.pid} and found it there"
                    + (holder_text(item, trace.lock_holders) if attribute == "advisory_locks" else ""),
                    fix=state_fix(seen_kind, item, on_connect=False),
                )
            )
    return found


def transaction_state(trace: ProbeTrace) -> SessionState | None:
    """What client A's transaction left in its server session: what it showed before its commit, and what
    client C then found on that backend that was not there before A's transaction (a LISTEN takes effect
    at the commit)."""
    before, done, after = trace.own_next, trace.own_done, trace.other_after
    if before is None or done is None:
        return None
    made = done.minus(before)
    if after is None or after.pid != before.pid:
        return made
    found = after.minus(before)
    return SessionState(
        pid=done.pid,
        settings=made.settings,
        prepared=made.prepared | found.prepared,
        channels=made.channels | found.channels,
        temp_tables=made.temp_tables | found.temp_tables,
        hold_cursors=made.hold_cursors | found.hold_cursors,
        advisory_locks=made.advisory_locks | found.advisory_locks,
    )


def item_in(item: str, message: str) -> bool:
    return f'"{item.lower()}"' in message.lower()


def driver_findings(trace: ProbeTrace) -> list[CompatibilityFinding]:
    run = trace.driver
    if run is None:
        return []
    found = []
    for sqlstate, kind, what in (
        (DUPLICATE_PREPARED_STATEMENT, "preparedStatementDuplicated", "already existed on the server connection"),
        (
            INVALID_STATEMENT_NAME,
            "preparedStatementMissing",
            "was missing on the server connection the statement went to (client A's, while a third client's"
            " transaction held the one A had used)",
        ),
    ):
        errors = [e for e in run.errors if e.sqlstate == sqlstate]
        if not errors:
            continue
        first = errors[0]
        configured = "configured for pooling" if run.pooling_applied else "with its default statement cache"
        found.append(
            CompatibilityFinding(
                kind=kind,
                evidence=f"two {run.driver} clients ({configured}) took turns on backend"
                f"{'s' if len(set(run.pids)) > 1 else ''} {', '.join(str(p) for p in sorted(set(run.pids)))}:"
                f" {counted(len(errors), 'statement')} failed because the driver's prepared statement {what}"
                f" (client {first.client}: {first.message})",
                fix=driver_fix(run.driver, trace.pooler_version),
            )
        )
    return found


def findings(trace: ProbeTrace) -> Compatibility:
    """The probe's findings: each with its evidence and fix; what it could not check in ``notes``."""
    notes = list(trace.notes)
    found = settings_findings(trace) + state_findings(trace) + driver_findings(trace)
    for error in trace.errors:
        if any(error.message in f.evidence for f in found):
            continue
        notes.append(f"client {error.client}'s statement failed ({error.sqlstate}): {error.message}")
    return Compatibility(pool_mode=trace.pool_mode, findings=found, notes=notes)


def incompatibilities(compatibility: Compatibility | None) -> int:
    """Findings that break the app's correctness."""
    if compatibility is None:
        return 0
    return sum(1 for f in compatibility.findings if f.breaks_correctness)


def incompatibilities_text(count: int) -> str:
    return f"{count} incompatibilit{'y' if count == 1 else 'ies'}"


def kinds_text(compatibility: Compatibility) -> str:
    kinds: dict[str, int] = {}
    for finding in compatibility.findings:
        kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
    return ", ".join(f"{kind} × {n}" if n > 1 else kind for kind, n in kinds.items())
