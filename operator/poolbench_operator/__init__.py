"""The poolbench kopf operator (importable as ``poolbench_operator``; never ``operator``)."""
