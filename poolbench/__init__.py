"""poolbench: measure SQLAlchemy connection pools against one PostgreSQL.

Layers (held by import-linter, see pyproject.toml): ``cli`` and the operator (``poolbench_operator``)
over the local platform (``local``), over the database edge (``db``) and the workload replica
(``workload``), over the pure core (``core``). A layer imports only layers below it.
"""

__version__ = "0.1.0"
