"""On-demand performance benchmarks for poolbench, each against a baseline measured in the same run.

Entry point: ``python -m benchmarks`` (``--smoke`` for tiny sizes, ``--only P1,P3`` to pick).
"""
