"""On-demand performance benchmarks for poolbench (issue #5). Entry point: ``python -m benchmarks``."""
