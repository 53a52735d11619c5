"""What the runner or operator and a replica process agree on, one module per contract (pure).

``drivers`` (the database drivers a replica can use), ``phases`` (what a replica says it is doing),
``replica_env`` (its environment: variable names, parsing and rendering), ``summary`` (the JSON
summary it writes and its readers read), ``metrics`` (the Prometheus names it serves),
``operator_metrics`` (the names the operator serves and the chart's alerts and dashboard query). Both
sides import these modules, so a rename fails at import or in mypy instead of only end to end.

A replica imports them at start-up: they import no pydantic and no yaml (import-linter holds this),
only the standard library and the core's ``histogram`` and ``outcomes``.
"""
