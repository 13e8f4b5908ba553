"""The report's plots. Every method keeps one colour in every plot (its row in the method
table); lines are means over pretraining seeds with their 95 % intervals as error bars
(the probe repeats' std for one seed), and each seed is drawn as a point. A point probed
along a longer run (:attr:`.results.Cell.along`) is drawn open and its line's legend says
of which runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..files import atomic_write
from ..plan.methods import METHODS, REFERENCE_LABELS
from .results import Cell

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#17becf", "#9467bd", "#8c564b",
            "#e377c2", "#7f7f7f", "#bcbd22")
COLOURS: Dict[str, str] = {name: _PALETTE[i % len(_PALETTE)]
                           for i, name in enumerate(m for m in METHODS
                                                    if m not in REFERENCE_LABELS)}
COLOURS.update({"raw-pixels": "#555555", "random-init": "#aaaaaa"})


def colour(method: str) -> str:
    return COLOURS.get(method, "#000000")


@dataclass
class Series:
    """One line: ``points`` are ``(x, cell)`` (cells may be missing)."""

    label: str
    method: str
    points: List[Tuple[object, Optional[Cell]]]


def _axes(title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path, ylabel: str) -> List[str]:
    """Write the figure; the legend's labels, in order."""
    ax.set_ylabel(ylabel)
    labels = list(ax.get_legend_handles_labels()[1])
    if labels:                      # a figure with nothing labelled has no legend
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_write(path) as handle:
            fig.savefig(handle, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return labels


def _error(cell: Cell) -> float:
    interval = cell.interval
    return 100 * (interval.high - interval.mean) if interval.n > 1 else 100 * cell.std


def _label(line: Series, cells: Sequence[Cell]) -> str:
    """The series' label; with cells probed along longer runs, which points are those."""
    runs = sorted({c.along for c in cells if c.along})
    if not runs:
        return line.label
    steps = ", ".join(f"{c.first.steps:,}" for c in cells if c.along)
    lengths = " and ".join(f"{n:,}" for n in runs)
    return f"{line.label} (open: {steps} = checkpoints of {lengths}-step runs)"


def plot_lines(path: Path, title: str, xlabel: str, series: Sequence[Series],
               flat: Dict[str, Optional[Cell]], log_x: bool = False,
               categorical: bool = False, ylabel: str = "test score (%)") -> List[str]:
    """One line per series (error bars: 95 % interval over seeds), every seed a point,
    and a dashed horizontal line per ``flat`` cell (references, step-less methods); a
    point probed along a longer run is open. Returns the legend's labels."""
    plt, fig, ax = _axes(title)
    for line in series:
        pts = [(x, c) for x, c in line.points if c is not None]
        if not pts:
            continue
        xs = [str(x) if categorical else x for x, _ in pts]
        col = colour(line.method)
        ax.errorbar(xs, [100 * c.mean for _, c in pts], yerr=[_error(c) for _, c in pts],
                    marker="o", capsize=3, label=_label(line, [c for _, c in pts]),
                    color=col, markevery=[i for i, (_, c) in enumerate(pts) if not c.along])
        hollow = [(x, c) for x, (_, c) in zip(xs, pts) if c.along]
        if hollow:
            ax.scatter([x for x, _ in hollow], [100 * c.mean for _, c in hollow], s=36,
                       facecolors="white", edgecolors=col, zorder=4)
        for x, c in zip(xs, (c for _, c in pts)):
            if len(c.rows) > 1:
                ax.scatter([x] * len(c.rows), [100 * s for s in c.seed_scores], s=8,
                           color=col, alpha=0.5, zorder=3)
    for name, cell in flat.items():
        if cell is not None:
            ax.axhline(100 * cell.mean, linestyle="--", linewidth=1, color=colour(name),
                       label=REFERENCE_LABELS.get(name, name))
    if log_x:
        ax.set_xscale("log")
        ticks = sorted({x for line in series for x, c in line.points if c is not None})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
    ax.set_xlabel(xlabel)
    return _save(plt, fig, ax, path, ylabel)


def plot_curves(path: Path, title: str, cells: Dict[str, Tuple[str, Optional[Cell]]]) -> None:
    """Test score against probe steps: label -> (method, cell)."""
    plt, fig, ax = _axes(title)
    for label, (method, cell) in cells.items():
        curve = cell.curve() if cell else []
        if curve:
            ax.plot([s for s, _ in curve], [100 * v for _, v in curve], label=label,
                    color=colour(method), linestyle="--" if method in REFERENCE_LABELS else "-")
    ax.set_xlabel("probe steps")
    _save(plt, fig, ax, path, "test score (%)")


def plot_bars(path: Path, title: str, series: Sequence[Series], xlabel: str) -> None:
    """Grouped bars (one group per x value), 95 % intervals, seeds as points."""
    plt, fig, ax = _axes(title)
    width = 0.8 / max(1, len(series))
    labels = [str(x) for x, _ in series[0].points] if series else []
    for i, line in enumerate(series):
        xs = [j + i * width for j in range(len(line.points))]
        cells = [c for _, c in line.points]
        ax.bar(xs, [100 * c.mean if c else 0 for c in cells], width,
               yerr=[_error(c) if c else 0 for c in cells], capsize=2, label=line.label,
               color=colour(line.method), alpha=0.85 if i % 2 == 0 else 0.6)
        for x, c in zip(xs, cells):
            if c is not None and len(c.rows) > 1:
                ax.scatter([x] * len(c.rows), [100 * s for s in c.seed_scores], s=6,
                           color="black", zorder=3)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels,
                  fontsize=8)
    ax.set_xlabel(xlabel)
    _save(plt, fig, ax, path, "test score (%)")
