"""The monitor: poolbench's one watch over the database and the variant's pooler (an edge: psycopg2).

Both platforms use it the same way: build it with a ``connect`` to the server, ``start`` it before
any load (its session holds its slot first), hand it to the step loop, ``stop`` it on the way out.
It owns the probe (one session reading pg_stat_activity in autocommit, counting only ``client
backend`` rows, immune to the server's timeouts: ``db.probe``, ``db.sessions``), the sampler thread
that reads it on a fixed schedule, the pooler probe of the variant being measured (``db.pooler``),
and what the loop asks of the server between two reads: the backends' ages and the termination of
leftovers. It implements the core's ``steploop.Monitor``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.sampling import Sample
from ..core.steploop import PoolerConsole
from ..core.workload_env import DATABASE
from .pooler import PoolerProbe
from .probe import Probe, SamplerThread
from .sessions import Connect


class Monitor:
    """``interval``: seconds between two reads; ``t0``: the platform's start (``time.monotonic()``),
    so samples carry the platform's own clock. ``timeline``, when given, receives every read too."""

    def __init__(self, connect: Connect, interval: float, t0: float, timeline: list[Sample] | None = None):
        self.probe = Probe(connect)
        self.sampler = SamplerThread(self.probe, interval, None, t0)
        self.pooler: PoolerProbe | None = None
        self.timeline = timeline

    def start(self) -> None:
        """Open the monitor's session (before any load, so it holds its slot) and start reading."""
        self.probe.open()
        self.sampler.start()

    def stop(self) -> None:
        """Stop reading and close every session; the reads not yet taken go to the timeline."""
        if self.sampler.ident is not None:
            self.sampler.stop()
        self.keep(self.sampler.take())
        self.watch_pooler(())
        self.probe.close()

    def keep(self, samples: list[Sample]) -> list[Sample]:
        if self.timeline is not None:
            self.timeline.extend(samples)
        return samples

    # -- the step loop's Monitor ------------------------------------------------------------------
    def samples(self) -> list[Sample]:
        return self.keep(self.sampler.take())

    def watch_pooler(self, consoles: Sequence[PoolerConsole]) -> None:
        self.pooler = PoolerProbe(consoles, DATABASE) if consoles else None
        self.sampler.use_pooler(self.pooler)  # closes the previous one

    def drop_pooler_connections(self) -> None:
        if self.pooler is not None:
            self.pooler.drop_server_connections()

    def connection_ages(self) -> list[float]:
        return self.probe.connection_ages()

    def terminate_backends(self) -> int:
        return self.probe.terminate_others()
