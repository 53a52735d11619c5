"""The Prometheus names a replica serves (``python -m workload`` with POOLBENCH_METRICS_PORT) and the
operator reads back through the pod proxy. Times are seconds; histograms list their non-empty buckets
and the limit edges (``poolbench.core.histogram``)."""

from __future__ import annotations

#: Counter of statements attempted, labelled by outcome (``poolbench.core.outcomes``).
ATTEMPTS = "poolbench_attempts"
#: The counter's sample as served (Prometheus' text format appends ``_total``).
ATTEMPTS_TOTAL = ATTEMPTS + "_total"
OUTCOME_LABEL = "outcome"
#: Enum of ``phases.PHASES``: one sample per phase, labelled with this same name; 1 for the current one.
PHASE = "poolbench_phase"

#: Histograms: successful statements from the checkout request to the commit, and checkouts.
STATEMENT_LATENCY = "poolbench_statement_latency_seconds"
CHECKOUT_WAIT = "poolbench_checkout_wait_seconds"
#: Gauges of each histogram's maximum (a histogram alone has none).
STATEMENT_LATENCY_MAX = "poolbench_statement_latency_max_seconds"
CHECKOUT_WAIT_MAX = "poolbench_checkout_wait_max_seconds"
#: Epoch seconds of the first attempt and of the last caller's end (0 until then).
WORK_STARTED = "poolbench_work_started_timestamp_seconds"
WORK_ENDED = "poolbench_work_ended_timestamp_seconds"

#: Gauges of the engine's pool (overflow and idle for a QueuePool only).
POOL_CHECKED_OUT = "poolbench_pool_checked_out"
POOL_PEAK_CHECKED_OUT = "poolbench_pool_peak_checked_out"
POOL_OVERFLOW = "poolbench_pool_overflow"
POOL_IDLE = "poolbench_pool_idle"
#: The engine's real DB-API connections (the client witness, ``workload.connections``): open now, the
#: most open at once (exact), and counters of connects and closes (served with ``_total``).
POOL_OPEN_CONNECTIONS = "poolbench_pool_open_connections"
POOL_MAX_OPEN_CONNECTIONS = "poolbench_pool_max_open_connections"
POOL_CONNECTS = "poolbench_pool_connects"
POOL_CLOSES = "poolbench_pool_closes"
TOTAL = "_total"

#: The HTTP path (beside ``/metrics``, on the same port) where a replica serves its summary now
#: (``summary.ReplicaSummary.to_text``): the operator reads a running replica's connections timeline there.
SUMMARY_HTTP_PATH = "summary"

#: Sample suffixes of a Prometheus histogram.
BUCKET, SUM = "_bucket", "_sum"
