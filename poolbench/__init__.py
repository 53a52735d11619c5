"""poolbench: measure SQLAlchemy connection pools against one PostgreSQL."""

__version__ = "0.1.0"
