"""The pure core: what a benchmark is and how it is judged, with no I/O.

``spec`` (the PoolBenchmark model), ``results`` (the status shape), ``verdict`` (the pool
arithmetic), ``sampling`` (peaks from pg_stat_activity snapshots), ``benchmark`` (the status state
machine), ``steploop`` (the one step loop, behind the ``Platform`` protocol), ``crd`` (the CRD
generated from the models), ``outcomes`` (error classes), ``contracts`` (what the platforms and a
replica process agree on: environment, summary, metric names, phases, drivers), ``workload_env`` (a
replica's environment from the spec). Plain functions and dataclasses: no drivers, cluster clients,
processes or threads (import-linter holds this), so every branch is unit-tested in milliseconds.
"""
