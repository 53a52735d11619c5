"""``poolbench observe``: watch a live server's client backends for a while, on a fixed schedule, and
keep what was seen (an ``Observation``, and each read's counts for ``--output`` and ``--plot``).

Only reads: one session (``db.live.open_watch``), its own settings aside, changes nothing on the
server. An interrupt (Ctrl-C) or a failed read ends the watch early; what was seen until then is kept
and returned, with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions

from ..core.attribution import Attribution, MatchRule, attribute_by_client
from ..core.observation import Observation
from ..db.live import ServerFacts, read_backends, scrub


@dataclass(frozen=True)
class WatchRead:
    """One read's counts (the ``--output`` timeline and the plot)."""

    t: float
    app: int
    others: int
    idle: int  # every attributed backend that is idle (the app's kept ones, and the others')
    headroom: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "t": round(self.t, 3),
            "app": self.app,
            "others": self.others,
            "idle": self.idle,
            "headroom": self.headroom,
        }


@dataclass
class WatchResult:
    facts: ServerFacts
    match: MatchRule | None
    observation: Observation = field(default_factory=Observation)
    reads: list[WatchRead] = field(default_factory=list)
    interrupted: bool = False
    error: str | None = None  # a read that failed and ended the watch


#: Called after each read with the elapsed seconds and the read's attribution (the live progress line).
OnRead = Callable[[float, Attribution, Observation], None]


def watch_server(
    conn: psycopg2.extensions.connection,
    facts: ServerFacts,
    match: MatchRule | None,
    duration: float,
    interval: float,
    on_read: OnRead | None = None,
    password: str | None = None,
) -> WatchResult:
    """Read every ``interval`` seconds for ``duration`` seconds (at least one read); the backends are
    grouped by client (``attribute_by_client``) and counted against the normal role's usable slots."""
    result = WatchResult(facts, match)
    usable = facts.usable_for_normal_role()
    start = time.monotonic()
    next_at = start
    try:
        while True:
            t = time.monotonic() - start
            attribution = attribute_by_client(read_backends(conn), match)
            result.observation.add(t, None, attribution, usable)
            everyone = [b for group in attribution.by_pod.values() for b in group] + list(attribution.others)
            result.reads.append(
                WatchRead(
                    t,
                    attribution.app_total if match is not None else attribution.total,
                    len(attribution.others),
                    sum(1 for b in everyone if b.kept_idle),
                    usable - attribution.total,
                )
            )
            if on_read is not None:
                on_read(t, attribution, result.observation)
            if t >= duration:
                break
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow read: skip the missed ticks, keep the grid
                next_at = time.monotonic()
                delay = 0
            time.sleep(max(0.0, min(delay, duration - t)))
    except KeyboardInterrupt:
        result.interrupted = True
    except psycopg2.Error as err:
        result.error = scrub(" ".join(str(err).split()), password) or type(err).__name__
    return result
