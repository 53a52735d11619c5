"""One benchmark replica: one SQLAlchemy engine, N caller threads (run as ``python -m workload``)."""
