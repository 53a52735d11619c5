"""The pure core: what a benchmark is and how it is judged, with no I/O.

``spec`` (the PoolBenchmark model), ``results`` (the status shape), ``verdict`` (the pool
arithmetic), ``sampling`` (peaks from pg_stat_activity snapshots), ``benchmark`` (the status state
machine), ``steploop`` (the one step loop, behind the ``Platform`` protocol), ``crd`` (the CRD
generated from the models), ``outcomes`` (error classes), ``workload_env`` (the replica's
environment contract). Plain functions and dataclasses: no drivers, cluster clients, processes or
threads (import-linter holds this), so every branch is unit-tested in milliseconds.
"""
