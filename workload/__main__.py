"""Entry point: ``python -m workload`` / ``poolbench-workload``. Configured by environment only."""

import os
import sys

from .replica import run


def main() -> None:
    sys.exit(run(dict(os.environ)))


if __name__ == "__main__":
    main()
