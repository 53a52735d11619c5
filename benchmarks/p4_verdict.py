"""P4 time to verdict: ``poolbench run`` on the seed (hold 1 s), process start to the final table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .common import ROOT, Result, fmt, median

CONFIGS = {
    # The runner without its two speed-ups: initdb on every run, one fresh interpreter per replica.
    "before (initdb, python -m workload per replica)": {"POOLBENCH_CACHE_DIR": "off", "POOLBENCH_LAUNCHER": "off"},
    "now (cached initdb template, forked replicas)": {},
}

PHASES = [  # (label, from event, to event); step events are numbered per step
    ("interpreter start", "launch", "interpreter up"),
    ("imports (CLI, runner)", "interpreter up", "runner imported"),
    ("data directory (initdb or template copy)", "server: start", "server: launched"),
    ("server start until it accepts connections", "server: launched", "server: ready"),
    ("probe connect, first step planned", "server: ready", "step 1: begin"),
]
STEP_PHASES = [
    ("replicas boot (spawn → first connection sampled)", "begin", "first connection seen"),
    ("work (→ every replica done)", "first connection seen", "work done"),
    ("hold + exit (→ every replica gone)", "work done", "replicas gone"),
    ("drain (→ no backend left)", "drain", "drained"),
]
TAIL = [
    ("clean-up (server stop, directories)", "cleanup", "cleanup done"),
    ("results table, exit", "cleanup done", "exit"),
]


def seed_copy(tmp: Path, smoke: bool) -> Path:
    doc = yaml.safe_load((ROOT / "manifests/examples/seed.yaml").read_text())
    doc["spec"]["workload"]["holdSeconds"] = 1
    if smoke:
        doc["spec"]["workload"]["iterations"] = 10
    path = tmp / "seed-hold1.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def timed_run(spec: Path, env_extra: dict[str, str], out: Path) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, **env_extra}
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(spec), "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"poolbench run failed ({proc.returncode}): {proc.stderr[-500:]}")
    return elapsed, json.loads(out.read_text())["status"]


def traced_run(spec: Path, env_extra: dict[str, str], tmp: Path) -> dict[str, float]:
    events_path = tmp / "events.json"
    env = {**os.environ, **env_extra}
    launch = time.time()
    subprocess.run(
        [sys.executable, "-m", "benchmarks._p4trace", str(events_path), str(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    end = time.time()
    events = {"launch": 0.0, "exit": end - launch}
    step = 0
    for t, what in json.loads(events_path.read_text()):
        if what == "step: begin":
            step += 1
        key = what.replace("step:", f"step {step}:") if what.startswith("step:") else what
        events.setdefault(key, t - launch)
    return events


def breakdown(events: dict[str, float], steps: int) -> list[tuple[str, float]]:
    rows = [(label, events.get(b, float("nan")) - events.get(a, float("nan"))) for label, a, b in PHASES]
    for i in range(1, steps + 1):
        for label, a, b in STEP_PHASES:
            rows.append(
                (
                    f"step {i}: {label}",
                    events.get(f"step {i}: {b}", float("nan")) - events.get(f"step {i}: {a}", float("nan")),
                )
            )
        if i < steps:
            rows.append(
                (
                    f"step {i} → step {i + 1}",
                    events.get(f"step {i + 1}: begin", float("nan")) - events.get(f"step {i}: drained", float("nan")),
                )
            )
    rows += [(label, events.get(b, float("nan")) - events.get(a, float("nan"))) for label, a, b in TAIL]
    rows.append(("**total**", events["exit"]))
    return rows


def run(smoke: bool) -> Result:
    reps = 1 if smoke else 3
    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-p4-"))
    try:
        spec = seed_copy(tmp, smoke)
        configs = {k: v for k, v in CONFIGS.items() if not smoke or not v}
        walls: dict[str, list[float]] = {k: [] for k in configs}
        verdicts = {}
        for _ in range(reps):  # alternate the configurations
            for name, env in configs.items():
                wall, status = timed_run(spec, env, tmp / "r.json")
                walls[name].append(wall)
                v = status.get("verdict") or {}
                verdicts[name] = (v.get("maxSafeReplicas"), v.get("firstFailingReplicas"))
        traces = {name: breakdown(traced_run(spec, env, tmp), 2) for name, env in configs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    now = "now (cached initdb template, forked replicas)"
    best = median(walls[now])
    goals: list[tuple[str, str, bool | None]] = [
        (
            "`poolbench run` seed (hold 1 s) ≤ 15 s, process start to the final table",
            f"{fmt(best, 1)} s (median of {reps})",
            best <= 15.0,
        )
    ]
    names = list(configs)
    md = [
        "`python -m poolbench.cli run seed.yaml` (the seed with `holdSeconds: 1`"
        + (", smoke: `iterations: 10`" if smoke else "")
        + f"), wall time from process start to exit, "
        f"{reps} runs per configuration, alternated. The 'before' configuration is the same code with "
        "`POOLBENCH_CACHE_DIR=off POOLBENCH_LAUNCHER=off` (initdb on every run, one fresh interpreter per replica).",
        "",
        "| configuration | wall (median) | runs | verdict (maxSafe, firstFailing) |",
        "|---|---|---|---|",
        *[
            f"| {n} | **{fmt(median(walls[n]), 2)} s** | {', '.join(fmt(w, 2) for w in walls[n])} | {verdicts[n]} |"
            for n in names
        ],
        "",
        "Where the time goes (one traced run per configuration: the same CLI with timestamps at each phase; "
        "the sampler's 100 ms interval blurs 'first connection sampled'):",
        "",
        "| phase | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, (label, _) in enumerate(traces[names[0]]):
        md.append(f"| {label} | " + " | ".join(f"{fmt(traces[n][i][1], 2)} s" for n in names) + " |")
    return Result(
        "P4",
        "Time to verdict",
        goals,
        "\n".join(md),
        {
            "walls": walls,
            "verdicts": {k: list(v) for k, v in verdicts.items()},
            "breakdown": {n: traces[n] for n in names},
        },
    )
