"""Chart geometry for the HTML report: coordinates computed here, drawn as inline SVG by the template.

Each chart is a plain mapping of shapes (rectangles, paths, texts) in a fixed view box; the SVG scales
to the page's width, so the same numbers serve a phone and a wide screen. Nothing here draws or
writes: the template turns the shapes into elements (escaped like every other value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

WIDTH = 720
HEIGHT = 300
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 14, 44
#: Most points one series keeps: a long run's reads are bucketed, each bucket keeping its highest read.
MAX_POINTS = 1200

STATE_COLORS = {
    "active": "#2a7ab0",
    "idle": "#9cc9e6",
    "idle_in_transaction": "#e39c2d",
    "other": "#b9b9b9",
}
STATE_LABELS = {
    "active": "active",
    "idle": "idle",
    "idle_in_transaction": "idle in transaction",
    "other": "other states",
}
MAX_CONNECTIONS_COLOR = "#c0392b"
USABLE_COLOR = "#d68910"
EXACT_COLOR = "#111111"
BOUNDARY_COLOR = "#7f8c8d"
SERIES_COLORS = ("#2a7ab0", "#e39c2d", "#7d3c98", "#27ae60", "#c0392b", "#5d6d7e")


@dataclass
class Chart:
    """One chart: its shapes in a ``WIDTH`` × ``HEIGHT`` view box, its legend and a sentence of what it shows."""

    chart_id: str
    title: str
    description: str
    rects: list[dict[str, Any]] = field(default_factory=list)
    paths: list[dict[str, Any]] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)
    legend: list[dict[str, str]] = field(default_factory=list)
    note: str = ""
    width: int = WIDTH
    height: int = HEIGHT


def _c(value: float) -> str:
    """A coordinate, short: two decimals at most."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def nice_max(value: float) -> float:
    """The axis top: ``value`` rounded up to 1, 2, 2.5 or 5 × a power of ten."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


class _Frame:
    """The plot area of a chart: data → view box coordinates."""

    def __init__(self, x0: float, x1: float, y_max: float, width: int = WIDTH, height: int = HEIGHT):
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y_max = y_max
        self.left, self.right = LEFT, width - RIGHT
        self.top, self.bottom = TOP, height - BOTTOM

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - value / self.y_max * (self.bottom - self.top)

    def y_axis(self, chart: Chart, unit: str = "") -> None:
        """Five horizontal grid lines with their values."""
        for i in range(6):
            value = self.y_max * i / 5
            y = self.y(value)
            chart.paths.append(
                {"d": f"M{_c(self.left)} {_c(y)}H{_c(self.right)}", "stroke": "#e3e3e3", "width": 1, "kind": "grid"}
            )
            chart.texts.append({"x": self.left - 6, "y": y + 4, "text": f"{value:g}{unit}", "anchor": "end"})
        chart.paths.append(
            {
                "d": f"M{_c(self.left)} {_c(self.top)}V{_c(self.bottom)}H{_c(self.right)}",
                "stroke": "#555555",
                "width": 1,
                "kind": "axis",
            }
        )

    def hline(self, chart: Chart, value: float, color: str, label: str, below: bool = False) -> None:
        """A limit across the plot, its label above the line (``below``: under it, so two close limits
        keep both labels readable)."""
        y = self.y(value)
        chart.paths.append(
            {
                "d": f"M{_c(self.left)} {_c(y)}H{_c(self.right)}",
                "stroke": color,
                "width": 1.6,
                "dash": "6 4",
                "title": f"{label}: {value:g}",
                "kind": "limit",
            }
        )
        chart.texts.append(
            {"x": self.right - 4, "y": y + 13 if below else y - 5, "text": f"{label} {value:g}", "anchor": "end"}
        )
        chart.legend.append({"color": color, "label": f"{label} ({value:g})", "dash": "1"})


def _bucketed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most ``MAX_POINTS`` reads, each bucket keeping its read with the most connections (a peak stays)."""
    if len(rows) <= MAX_POINTS:
        return rows
    size = math.ceil(len(rows) / MAX_POINTS)
    return [max(rows[i : i + size], key=lambda r: r.get("total", 0)) for i in range(0, len(rows), size)]


def state_counts(row: dict[str, Any]) -> dict[str, int]:
    """One read's backends by state, the states beyond the three named ones summed as ``other``."""
    named = {k: int(row.get(k, 0) or 0) for k in ("active", "idle", "idle_in_transaction")}
    named["other"] = max(0, int(row.get("total", 0) or 0) - sum(named.values()))
    return named


def connections_over_time(
    timeline: list[dict[str, Any]],
    server_timeline: list[dict[str, Any]],
    step_labels: list[str],
    max_connections: int,
    usable: int | None,
) -> Chart:
    """Connections by state over time (stacked reads), the server log's exact count over them, the
    max_connections and usable lines, and each step's start and end."""
    chart = Chart(
        "connections-over-time",
        "Connections by state over time",
        "Client backends the monitor read by state (stacked), the exact count from the server's log (black),"
        " each step's start and end (grey), and the server's limits.",
    )
    rows = _bucketed([r for r in timeline if r.get("ok", True)])
    times = [float(r["t"]) for r in rows]
    exact = [(float(t), int(n)) for account in server_timeline for t, n in account.get("open", [])]
    bounds = [float(a[k]) for a in server_timeline for k in ("start", "end") if a.get(k) is not None]
    all_times = times + [t for t, _ in exact] + bounds
    x0, x1 = (min(all_times), max(all_times)) if all_times else (0.0, 1.0)
    highest = max([int(r.get("total", 0) or 0) for r in rows] + [n for _, n in exact] + [max_connections, 1])
    frame = _Frame(x0, x1, nice_max(highest * 1.05))
    frame.y_axis(chart)
    _time_axis(chart, frame)
    _stacked_areas(chart, frame, rows)
    drawn_exact = _exact_lines(chart, frame, server_timeline)
    _boundaries(chart, frame, server_timeline, step_labels)
    frame.hline(chart, max_connections, MAX_CONNECTIONS_COLOR, "max_connections")
    if usable is not None:
        frame.hline(chart, usable, USABLE_COLOR, "usable", below=True)
    if not rows and not drawn_exact:
        chart.note = "No read of the server succeeded: there is nothing to draw over time."
    return chart


def _stacked_areas(chart: Chart, frame: _Frame, rows: list[dict[str, Any]]) -> None:
    """The reads by state, stacked: one closed path per state, between the states below it and its own top."""
    times = [float(r["t"]) for r in rows]
    lower = [0] * len(rows)
    for state in ("active", "idle", "idle_in_transaction", "other"):
        upper = [low + state_counts(r)[state] for low, r in zip(lower, rows, strict=True)]
        if rows and any(u > low for u, low in zip(upper, lower, strict=True)):
            top = " ".join(f"L{_c(frame.x(t))} {_c(frame.y(u))}" for t, u in zip(times, upper, strict=True))
            back = " ".join(
                f"L{_c(frame.x(t))} {_c(frame.y(low))}" for t, low in reversed(list(zip(times, lower, strict=True)))
            )
            chart.paths.append(
                {
                    "d": f"M{_c(frame.x(times[0]))} {_c(frame.y(lower[0]))} {top} {back}Z",
                    "fill": STATE_COLORS[state],
                    "stroke": "none",
                    "title": STATE_LABELS[state],
                    "kind": "area",
                }
            )
            chart.legend.append({"color": STATE_COLORS[state], "label": STATE_LABELS[state]})
        lower = upper


def _exact_lines(chart: Chart, frame: _Frame, server_timeline: list[dict[str, Any]]) -> bool:
    """Each step's exact count from the server's log; False when no step has one."""
    drawn_exact = False
    for account in server_timeline:
        points = account.get("open", [])
        if not points:
            continue
        d = f"M{_c(frame.x(points[0][0]))} {_c(frame.y(points[0][1]))}"
        previous = points[0][1]
        for t, n in points[1:]:  # a step line: the count changes only at a log event
            d += f"H{_c(frame.x(t))}V{_c(frame.y(n))}" if n != previous else f"H{_c(frame.x(t))}"
            previous = n
        chart.paths.append({"d": d, "stroke": EXACT_COLOR, "width": 1.4, "title": "open (server log)", "kind": "exact"})
        drawn_exact = True
    if drawn_exact:
        chart.legend.append({"color": EXACT_COLOR, "label": "open connections (server log)"})
    return drawn_exact


def _boundaries(chart: Chart, frame: _Frame, server_timeline: list[dict[str, Any]], step_labels: list[str]) -> None:
    """Each step's start and end, labelled with its step when the log has an account of every step."""
    for index, account in enumerate(server_timeline):
        for key in ("start", "end"):
            if account.get(key) is None:
                continue
            x = frame.x(float(account[key]))
            chart.paths.append(
                {
                    "d": f"M{_c(x)} {_c(frame.top)}V{_c(frame.bottom)}",
                    "stroke": BOUNDARY_COLOR,
                    "width": 1,
                    "dash": "2 3",
                    "kind": "boundary",
                }
            )
        if len(server_timeline) == len(step_labels) and account.get("start") is not None:
            chart.texts.append(
                {"x": frame.x(float(account["start"])) + 3, "y": frame.top + 10, "text": step_labels[index]}
            )
    if server_timeline:
        chart.legend.append({"color": BOUNDARY_COLOR, "label": "step start and end", "dash": "1"})


def _time_axis(chart: Chart, frame: _Frame) -> None:
    """Seconds from the first read, at round steps (about five of them)."""
    span = frame.x1 - frame.x0
    step = nice_max(span / 5)
    count = int(span // step)
    for i in range(count + 1):
        chart.texts.append(
            {"x": frame.x(frame.x0 + i * step), "y": frame.bottom + 16, "text": f"{i * step:g}", "anchor": "middle"}
        )
    chart.texts.append(
        {"x": (frame.left + frame.right) / 2, "y": frame.bottom + 34, "text": "seconds", "anchor": "middle"}
    )


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]


def grouped_bars(
    chart_id: str,
    title: str,
    description: str,
    categories: list[str],
    series: list[Series],
    unit: str = "",
    limits: Sequence[tuple[str, float, str]] = (),
) -> Chart:
    """Bars per category, one per series side by side (a missing value draws no bar), with optional
    horizontal limit lines (label, value, color)."""
    chart = Chart(chart_id, title, description)
    values = [v for s in series for v in s.values if v is not None]
    top = max([*values, *(value for _, value, _ in limits), 0.0])
    frame = _Frame(0, max(len(categories), 1), nice_max(top * 1.05))
    frame.y_axis(chart, unit)
    slot = (frame.right - frame.left) / max(len(categories), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for ci, category in enumerate(categories):
        left = frame.left + ci * slot + slot * 0.1
        for si, s in enumerate(series):
            value = s.values[ci]
            if value is None:
                continue
            y = frame.y(value)
            chart.rects.append(
                {
                    "x": left + si * bar,
                    "y": y,
                    "w": max(bar - 1, 0.5),
                    "h": max(frame.bottom - y, 0.0),
                    "fill": SERIES_COLORS[si % len(SERIES_COLORS)],
                    "title": f"{category} · {s.name}: {value:g}{unit}",
                }
            )
        chart.texts.append(
            {"x": frame.left + (ci + 0.5) * slot, "y": frame.bottom + 16, "text": category, "anchor": "middle"}
        )
    chart.legend.extend(
        {"color": SERIES_COLORS[si % len(SERIES_COLORS)], "label": s.name} for si, s in enumerate(series)
    )
    for index, (label, value, color) in enumerate(limits):
        frame.hline(chart, value, color, label, below=index % 2 == 1)
    if not values:
        chart.note = "No step measured this: nothing to draw."
    return chart
