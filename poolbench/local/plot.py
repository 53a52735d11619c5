"""Connections over time: the server's exact count from its log (each refusal marked), the sampled
reads by state beside it (faint, once the exact count is there), step boundaries and the
max_connections line."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from ..core.timeline import WindowAccount
from .observe import WatchRead
from .runner import LocalResult

EXACT_COLOR = "#111111"
REFUSAL_COLOR = "#d62728"


def _exact(
    ax: Axes, accounts: list[WindowAccount], shift: float = 0.0, color: str = EXACT_COLOR, label: str = ""
) -> bool:
    """Each step's exact count of open client backends (a step line: it changes only at a log event) and
    its refusals, marked where they happened; False when no step has one."""
    first = True
    refused_label = True
    for account in accounts:
        if not account.points:
            continue
        ax.step(
            [t - shift for t, _ in account.points],
            [n for _, n in account.points],
            where="post",
            color=color,
            linewidth=1.4,
            label=(label or "open connections (server log)") if first else "_exact",
        )
        first = False
        if account.refusals:
            times = [r.at - shift for r in account.refusals]
            levels = [_count_at(account, r.at) for r in account.refusals]
            ax.plot(
                times,
                levels,
                "v",
                color=REFUSAL_COLOR,
                markersize=5,
                label=f"refused ({sum(len(a.refusals) for a in accounts)})" if refused_label else "_refused",
            )
            refused_label = False
    return not first


def _count_at(account: WindowAccount, t: float) -> int:
    count = account.points[0][1]
    for at, n in account.points:
        if at > t:
            break
        count = n
    return count


def plot_connections(result: LocalResult, max_connections: int, path: str, title: str = "") -> None:
    """Connections by state over time (top) and, per step, what the callers felt (bottom panel).
    With variants, the variants are overlaid instead (``plot_variants``)."""
    if any(span.variant for span in result.spans):
        plot_variants(result, max_connections, path, title)
        return
    samples = [s for s in result.timeline if s.ok]
    t = [s.t for s in samples]
    fig, (ax, lat) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.5]})
    active = [s.by_state.get("active", 0) for s in samples]
    idle = [s.by_state.get("idle", 0) for s in samples]
    in_tx = [s.by_state.get("idle_in_transaction", 0) for s in samples]
    exact = bool(result.server_accounts)
    ax.stackplot(
        t,
        active,
        idle,
        in_tx,
        labels=[f"{state}{' (sampled)' if exact else ''}" for state in ("active", "idle", "idle in transaction")],
        colors=["#d62728", "#1f77b4", "#ff7f0e"],
        alpha=0.25 if exact else 0.8,  # beside the exact count, the reads are the faint comparison
    )
    _exact(ax, result.server_accounts)
    ax.axhline(max_connections, color="black", linestyle="--", label=f"max_connections {max_connections}")
    for span in result.spans:
        ax.axvline(span.start, color="grey", linewidth=0.8)
        ax.text(
            span.start, max_connections * 1.02, f" step {span.index}: {span.replicas} replicas", fontsize=8, va="bottom"
        )
    gaps = [s.t for s in result.timeline if not s.ok]
    if gaps:
        ax.plot(gaps, [0] * len(gaps), "kx", label="probe gap")
    ax.set_ylabel("client connections")
    ax.set_ylim(0, max_connections * 1.12)
    ax.set_title(f"poolbench {title}: " + ("open connections, exact" if exact else "connections by state"))
    ax.legend(loc="center right", fontsize=8)  # clear of the step labels along the top
    _latency_panel(lat, result)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency_panel(ax: Axes, result: LocalResult) -> None:
    """Each step's statement latency and pool checkout wait (p50, p95) across the step's span."""
    drawn = False
    plotted: list[float] = []
    for span, step in zip(result.spans, result.status.all_steps(), strict=False):
        end = span.end if span.end is not None else span.start
        for values, color, name in (
            (step.latency_ms, "#9467bd", "latency"),
            (step.checkout_wait_ms, "#2ca02c", "checkout wait"),
        ):
            dashed = values is step.checkout_wait_ms
            if values.max <= 0:
                continue
            plotted += [v for v in (values.p50, values.p95) if v > 0]
            hidden = drawn  # one legend entry per series ("_" labels are left out of legends)
            # Dashed checkout wait: a queued caller's latency is mostly its wait, so the lines may meet.
            ax.hlines(
                values.p95,
                span.start,
                end,
                colors=color,
                linewidth=2.5,
                linestyles="--" if dashed else "-",
                label="_p95" if hidden else f"{name} p95",
            )
            ax.hlines(
                values.p50,
                span.start,
                end,
                colors=color,
                linewidth=1,
                linestyles=":",
                label="_p50" if hidden else f"{name} p50",
            )
        drawn = drawn or step.latency_ms.max > 0 or step.checkout_wait_ms.max > 0
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms per statement")
    if drawn and plotted:
        ax.set_yscale("log")
        ax.set_ylim(min(plotted) / 3, max(plotted) * 3)  # room above and below the lines
        ax.legend(loc="center right", fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no latency measured", transform=ax.transAxes, ha="center", va="center", fontsize=8)


COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def plot_variants(result: LocalResult, max_connections: int, path: str, title: str = "") -> None:
    """The variants overlaid on one time axis (seconds since each variant's first step): server
    backends (solid) and, for a pooled variant, clients at the pooler (dotted); below, each step's
    p95 latency by replica count."""
    fig, (ax, lat) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [3, 1.6]})
    top = max_connections
    for n, variant in enumerate(result.status.variants):
        color = COLORS[n % len(COLORS)]
        spans = [s for s in result.spans if s.variant == variant.name]
        if not spans:
            continue
        start = spans[0].start
        end = max((s.end or s.start) for s in spans)
        samples = [s for s in result.timeline if s.ok and start <= s.t <= end]
        t = [s.t - start for s in samples]
        accounts = [a for a in result.server_accounts if start <= a.start <= end]
        drawn = _exact(ax, accounts, start, color, f"{variant.name}: server backends (log)")
        ax.plot(
            t,
            [s.total for s in samples],
            color=color,
            linewidth=1.0 if drawn else 1.6,
            alpha=0.35 if drawn else 1.0,
            label=f"{variant.name}: server backends" + (" (sampled)" if drawn else ""),
        )
        if variant.pooler is not None:
            clients = [(s.t - start, s.pooler.clients) for s in samples if s.pooler is not None and s.pooler.ok]
            if clients:
                top = max(top, max(c for _, c in clients))
                ax.plot(
                    [c[0] for c in clients],
                    [c[1] for c in clients],
                    color=color,
                    linestyle=":",
                    linewidth=1.4,
                    label=f"{variant.name}: clients at the pooler",
                )
        for span in spans:
            ax.axvline(span.start - start, color=color, linewidth=0.5, alpha=0.5)
        steps = [s for s in variant.steps if s.latency_ms.max > 0]
        if steps:
            lat.plot(
                [s.replicas for s in steps],
                [s.latency_ms.p95 for s in steps],
                marker="o",
                color=color,
                label=variant.name,
            )
        failed = [s for s in variant.steps if s.outcome != "Passed"]
        if failed:
            lat.plot(
                [s.replicas for s in failed],
                [max(s.latency_ms.p95, 0.1) for s in failed],
                "x",
                color=color,
                markersize=10,
            )
    ax.axhline(max_connections, color="black", linestyle="--", label=f"max_connections {max_connections}")
    ax.set_ylim(0, top * 1.12)
    ax.set_xlabel("seconds since the variant's first step")
    ax.set_ylabel("connections")
    ax.set_title(f"poolbench {title}: variants overlaid")
    ax.legend(loc="upper right", fontsize=7)
    lat.set_xlabel("replicas (x: the step failed)")
    lat.set_ylabel("p95 latency, ms")
    if lat.lines:
        lat.set_yscale("log")
        lat.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_watch(reads: list[WatchRead], usable: int, path: str, title: str = "") -> None:
    """A watch of a live server (``poolbench observe``): the app's (or every grouped) backends and the
    others' stacked, the idle ones among them, and the usable slots' line."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    t = [r.t for r in reads]
    ax.stackplot(
        t,
        [r.app for r in reads],
        [r.others for r in reads],
        labels=["app (or every client, without --match)", "other tenants"],
        colors=["#1f77b4", "#7f7f7f"],
        alpha=0.8,
        step="post",
    )
    ax.step(t, [r.idle for r in reads], where="post", color="#ff7f0e", linewidth=1.2, label="idle (kept open)")
    ax.axhline(usable, color="black", linestyle="--", label=f"usable for a normal role {usable}")
    ax.set_xlabel("seconds since the watch began")
    ax.set_ylabel("client backends")
    ax.set_ylim(0, max([usable, *(r.app + r.others for r in reads)]) * 1.12)
    ax.set_title(title or "poolbench observe")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
