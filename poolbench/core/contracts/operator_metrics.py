"""The Prometheus names the operator serves on its own ``/metrics`` and the chart's alerts and dashboard
query: one module, so an alert or a panel can only name a metric that exists.

Per benchmark and variant (labels ``namespace``, ``benchmark``, ``variant``), distinct from the names a
workload replica serves (``metrics``): the operator's are merged over a benchmark's replicas and carry
no pod or process label. Base units (seconds), ``_total`` counters. A ServiceMonitor or PodMonitor
must keep these labels (``honorLabels: true``): Prometheus would otherwise rename ``namespace`` to
``exported_namespace`` beside the target's own.
"""

from __future__ import annotations

#: The labels every per-benchmark sample carries, in this order.
NAMESPACE_LABEL = "namespace"
BENCHMARK_LABEL = "benchmark"
VARIANT_LABEL = "variant"
BENCHMARK_LABELS = (NAMESPACE_LABEL, BENCHMARK_LABEL, VARIANT_LABEL)
#: The variant label of a benchmark without variants (and of an own-app benchmark).
DEFAULT_VARIANT = "default"

#: Gauge: the workload's client backends now, by ``state`` (STATES).
BACKENDS = "poolbench_benchmark_backends"
STATE_LABEL = "state"
STATES = ("active", "idle", "idle_in_transaction", "other")
#: Gauge: the current (or last) step's peak of client backends.
PEAK_BACKENDS = "poolbench_benchmark_peak_backends"
#: Gauge: ghosts, the idle connections open when the last finished step's work ended.
GHOST_BACKENDS = "poolbench_benchmark_ghost_backends"
#: Gauges: the slots the workload's role may use, and the server's max_connections.
USABLE_CONNECTIONS = "poolbench_benchmark_usable_connections"
MAX_CONNECTIONS = "poolbench_benchmark_max_connections"
#: Gauge: the replicas of the current step.
REPLICAS = "poolbench_benchmark_replicas"
#: Gauges: the current step (1-based; 0 before the first) and the plan's number of steps.
STEP = "poolbench_benchmark_step"
STEPS = "poolbench_benchmark_steps"
#: Counter (served with ``_total``): failed attempts by ``class`` (``results.ERROR_CLASSES``).
FAILURES = "poolbench_benchmark_failures"
CLASS_LABEL = "class"
#: Histograms merged over the replicas (seconds).
STATEMENT_LATENCY = "poolbench_benchmark_statement_latency_seconds"
CHECKOUT_WAIT = "poolbench_benchmark_checkout_wait_seconds"
#: State set: 1 for the benchmark's current phase (``results.Phase``), 0 for the others, label ``phase``.
PHASE = "poolbench_benchmark_phase"
PHASE_LABEL = "phase"
#: Gauge: epoch seconds of the benchmark's last progress (a read, a step begun or ended): a stalled
#: benchmark is one whose phase is Running while this stops moving.
PROGRESS = "poolbench_benchmark_progress_timestamp_seconds"

#: The operator's own health (no benchmark labels). Counters are served with ``_total``.
RECONCILES = "poolbench_operator_reconciles"
STATUS_PATCHES = "poolbench_operator_status_patches"
API_ERRORS = "poolbench_operator_api_errors"
RUNNING_BENCHMARKS = "poolbench_operator_running_benchmarks"

TOTAL = "_total"
