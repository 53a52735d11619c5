"""Will a plan fit this machine? A rough, deliberately generous estimate (pure).

A local run starts every replica of a step as a process with its threads, and one server backend
per connection: a plan far beyond the machine would swap it to a standstill or hit process limits
long before it measured anything. The figures are upper bounds from the scale benchmark (50
replicas × 20 connections took 1.4 GiB in all, measured as PSS), doubled for safety.
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import per_replica_peak
from .spec import PoolBenchmarkSpec

MIB = 1024 * 1024
REPLICA_BYTES = 40 * MIB  # one replica process: interpreter, SQLAlchemy, its threads' stacks in use
BACKEND_BYTES = 2 * MIB  # one server backend
SERVER_BYTES = 200 * MIB  # the server itself and the runner
MAX_PROCESSES_PER_CORE = 200  # replica processes per core before start-up alone takes minutes
MEMORY_SHARE = 0.5  # of the machine's memory a plan may take


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_bytes: int


def estimated_bytes(spec: PoolBenchmarkSpec, replicas: int) -> int:
    backends = min(replicas * per_replica_peak(spec), spec.postgres.max_connections)
    return SERVER_BYTES + replicas * spec.workload.processes * REPLICA_BYTES + backends * BACKEND_BYTES


def local_capacity_problems(spec: PoolBenchmarkSpec, machine: Machine) -> list[tuple[str, str]]:
    """Why the plan's largest step would not fit this machine (empty when it fits)."""
    problems = []
    counts = spec.step_counts()
    largest = max(counts)
    where = "spec.steps.search.max" if spec.search else f"spec.steps[{counts.index(largest)}]"
    need = estimated_bytes(spec, largest)
    allowed = int(machine.memory_bytes * MEMORY_SHARE)
    if need > allowed:
        problems.append(
            (
                where,
                f"{largest} replicas need about {need / 2**30:.1f} GiB here (processes and server"
                f" backends), more than half of this machine's {machine.memory_bytes / 2**30:.1f} GiB",
            )
        )
    max_processes = MAX_PROCESSES_PER_CORE * max(1, machine.cores)
    if largest > max_processes:
        problems.append((where, f"{largest} replica processes are more than {max_processes} on {machine.cores} cores"))
    return problems
