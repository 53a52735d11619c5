"""What each test tier needs built, built once per run before its first test.

Each build is a ``hack/`` script that caches its result outside the repository and prints the path on
its last line; an environment variable that is already set names a ready build and skips the script.
The builds run before the tests (not inside a fixture) so that a cold build is not cut short by a
test's timeout; a build that fails stops the run with its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: environment variable -> the script that builds what it names
BUILDS = {
    "POOLBENCH_K8S_BIN": "build-control-plane.sh",
    "POOLBENCH_HELM": "build-helm.sh",
    "POOLBENCH_KSTATUS": "build-kstatus.sh",
    "POOLBENCH_NODE_BIN": "build-node.sh",
    "POOLBENCH_IMAGES": "build-images.sh",
    # Not a build: the Prometheus Operator's CRDs, fetched once (the chart's PrometheusRule is dry-run).
    "POOLBENCH_PROMETHEUS_CRDS": "fetch-prometheus-operator-crds.sh",
    "POOLBENCH_CHECKOV": "build-checkov.sh",
}

#: tier -> the builds its tests use (the unit and postgres tiers build nothing)
TIER_BUILDS: dict[str, tuple[str, ...]] = {
    "unit": (),
    "postgres": (),
    "k8s": (
        "POOLBENCH_K8S_BIN",
        "POOLBENCH_HELM",
        "POOLBENCH_PROMETHEUS_CRDS",
        "POOLBENCH_CHECKOV",
        "POOLBENCH_KSTATUS",
    ),
    "node": ("POOLBENCH_K8S_BIN", "POOLBENCH_HELM", "POOLBENCH_NODE_BIN", "POOLBENCH_IMAGES"),
}


class BuildError(RuntimeError):
    pass


def ensure(env_name: str) -> Path:
    """The build ``env_name`` names, built (or found in its cache) when the variable is unset."""
    if os.environ.get(env_name):
        return Path(os.environ[env_name])
    script = ROOT / "hack" / BUILDS[env_name]
    started = time.monotonic()
    print(f"\n{env_name} is unset: running hack/{script.name}", file=sys.stderr, flush=True)
    # Its progress goes to this run's output (a cold build takes minutes); its result is the last line.
    proc = subprocess.run([str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BuildError(f"hack/{script.name} failed (exit {proc.returncode}): its output is above")
    path = lines[-1].strip()
    os.environ[env_name] = path
    print(f"{env_name}={path} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
    return Path(path)


def ensure_for(tiers: set[str]) -> None:
    """Every build the given tiers need, each once."""
    for env_name in BUILDS:
        if any(env_name in TIER_BUILDS[tier] for tier in tiers):
            ensure(env_name)
