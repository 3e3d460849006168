"""Matplotlib figures for the what-if report, returned as base64 PNG so the HTML is self-contained.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``, so
building a report touches no global plotting state. Every axis is labelled with its unit.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def to_base64_png(fig: Figure) -> str:
    """Render a figure to PNG and return it base64-encoded."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> str:
    """One line per series (``label -> (x, y)``), markers on the points."""
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    for i, (label, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=COLORS[i % len(COLORS)], label=label)
    if logx:
        ax.set_xscale("log", base=2)
        xs = sorted({float(v) for x, _ in series.values() for v in x})
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    return to_base64_png(fig)


def breakdown_plot(
    labels: Sequence[str],
    compute_us: npt.ArrayLike,
    dispatch_us: npt.ArrayLike,
    combine_us: npt.ArrayLike,
    exposed_us: npt.ArrayLike,
    layer_us: npt.ArrayLike,
    *,
    title: str,
) -> str:
    """Horizontal stacked bars per scenario: compute, then dispatch and combine split into the part left
    exposed on the critical path and the part hidden by overlap; a black tick marks the layer time."""
    comp = np.asarray(compute_us, dtype=float)
    disp = np.asarray(dispatch_us, dtype=float)
    comb = np.asarray(combine_us, dtype=float)
    exposed = np.asarray(exposed_us, dtype=float)
    comm = disp + comb
    frac = np.divide(np.clip(exposed, 0, None), comm, out=np.zeros_like(comm), where=comm > 0)
    frac = np.clip(frac, 0.0, 1.0)
    parts = [
        ("compute", comp, "#4c72b0", None),
        ("dispatch (exposed)", disp * frac, "#dd8452", None),
        ("combine (exposed)", comb * frac, "#c44e52", None),
        ("dispatch + combine hidden by overlap", comm * (1 - frac), "#cccccc", "//"),
    ]
    fig = Figure(figsize=(8.0, max(2.5, 0.32 * len(labels) + 1.4)))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for name, values, color, hatch in parts:
        ax.barh(y, values, left=left, color=color, hatch=hatch, label=name, edgecolor="white")
        left += values
    ax.scatter(layer_us, y, marker="|", s=200, color="black", label="layer time", zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("time per MoE layer (us, mean over layers)")
    ax.set_title(title)
    # Below the axes, so the legend never hides a bar.
    ax.legend(
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.5 / fig.get_figheight()),
        ncol=3,
    )
    ax.grid(True, axis="x", alpha=0.3)
    return to_base64_png(fig)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
    reference_line: float | None = None,
) -> str:
    """Bars per group, one colour per series; an optional horizontal reference line (say, 1.0x)."""
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) * max(len(series), 1) * 0.6 + 2.0), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=name,
            color=COLORS[i % len(COLORS)],
        )
    if reference_line is not None:
        ax.axhline(reference_line, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    return to_base64_png(fig)


def cost_scatter(
    points: Sequence[tuple[str, float, float]],
    *,
    title: str,
) -> str:
    """Cost per million tokens (x) against throughput (y), one labelled point per configuration."""
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    for i, (label, cost, tps) in enumerate(points):
        ax.scatter(
            [cost],
            [tps],
            color=COLORS[i % len(COLORS)],
            marker=MARKERS[i % len(MARKERS)],
            s=60,
            label=label,
        )
    ax.set_xlabel("cost (USD per million tokens)")
    ax.set_ylabel("throughput (tokens/s, MoE layers)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(fontsize="small")
    return to_base64_png(fig)
