"""Connections over time by state, with step boundaries and the max_connections line."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runner import LocalResult  # noqa: E402


def plot_connections(result: LocalResult, max_connections: int, path: str, title: str = "") -> None:
    samples = [s for s in result.timeline if s.ok]
    t = [s.t for s in samples]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    active = [s.by_state.get("active", 0) for s in samples]
    idle = [s.by_state.get("idle", 0) for s in samples]
    in_tx = [s.by_state.get("idle_in_transaction", 0) for s in samples]
    ax.stackplot(t, active, idle, in_tx, labels=["active", "idle", "idle in transaction"],
                 colors=["#d62728", "#1f77b4", "#ff7f0e"], alpha=0.8)
    ax.axhline(max_connections, color="black", linestyle="--", label=f"max_connections {max_connections}")
    for span in result.spans:
        ax.axvline(span.start, color="grey", linewidth=0.8)
        ax.text(span.start, max_connections * 1.02, f" step {span.index}: {span.replicas} replicas",
                fontsize=8, va="bottom")
    gaps = [s.t for s in result.timeline if not s.ok]
    if gaps:
        ax.plot(gaps, [0] * len(gaps), "kx", label="probe gap")
    ax.set_xlabel("seconds")
    ax.set_ylabel("client connections")
    ax.set_ylim(0, max_connections * 1.12)
    ax.set_title(f"poolbench {title}: connections by state")
    ax.legend(loc="center right", fontsize=8)  # clear of the step labels along the top
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
