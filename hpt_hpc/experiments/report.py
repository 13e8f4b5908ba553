"""``hpt-hpc report``: Markdown tables and paper-style plots of a sweep, from MLflow.

Sections appear when the sweep has the units for them: linear separability (method x
pretraining steps, method x dataset), probe score vs probe steps, sequential transfer
(B, B+S, B+T, B+S+T), augmentation robustness, target-data amount, semi-supervised
fine-tuning. Every table carries the raw-pixel and random-init reference rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..eval.record import EvalRecord
from ..plan.methods import METHODS, PAPER_METHODS, REFERENCE_LABELS, TRANSFER
from .results import Cell, find, group_cells
from .tables import markdown_table, write_csv

STEPLESS = tuple(name for name, m in METHODS.items() if not m.uses_steps)


@dataclass
class Report:
    markdown: str
    plots: List[Path] = field(default_factory=list)
    path: Optional[Path] = None


def _ordered(methods: Sequence[str]) -> List[str]:
    order = list(PAPER_METHODS) + ["B+S", "B+S+T"]
    return sorted(set(methods), key=lambda m: (order.index(m) if m in order else 99, m))


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> List[str]:
    return markdown_table(header, body) + [""]


def _cell_text(cell: Optional[Cell]) -> str:
    return cell.text() if cell else "–"


def _reference_rows(cells, dataset: str, width: int, labels: int = 1) -> List[List[str]]:
    """Raw-pixel and random-init rows; the score sits in the first value column."""
    rows = []
    for method, label in REFERENCE_LABELS.items():
        cell = find(cells, "linear", method, dataset)
        if cell:
            rows.append([label] + [""] * (labels - 1) + [cell.text()]
                        + [""] * (width - labels - 1))
    return rows


def _steps_table(cells, protocol: str, dataset: str, methods: Sequence[str],
                 steps: Sequence[int]) -> Tuple[List[str], List[List[str]]]:
    """Method x target-steps table (step-less methods in their own column) with the
    reference rows."""
    header = ["method", "no target steps"] + [f"{s} steps" for s in steps]
    body = []
    for method in methods:
        if method in STEPLESS:
            body.append([method, _cell_text(find(cells, protocol, method, dataset))]
                        + [""] * len(steps))
        else:
            body.append([method, ""] + [_cell_text(find(cells, protocol, method, dataset, s))
                                        for s in steps])
    return header, body + _reference_rows(cells, dataset, len(header))


def _linear_section(cells, rows: Sequence[EvalRecord], dataset: str, out: Path,
                    name: str, plots: List[Path]) -> List[str]:
    main = [r for r in rows if r.protocol == "linear" and r.dataset == dataset
            and r.augment == "all" and r.images == "all" and r.method not in REFERENCE_LABELS]
    if not main:
        return []
    steps = sorted({r.steps for r in main if r.steps > 0})
    methods = _ordered(r.method for r in main)
    header, body = _steps_table(cells, "linear", dataset, methods, steps)
    lines = [f"### {dataset}: linear probe vs target pretraining steps", ""]
    lines += _table(header, body)
    plot = out / f"{name}-{dataset}-pretraining-steps.png"
    plot_lines(plot, f"{dataset}: linear probe vs target pretraining steps",
                "target pretraining steps", {m: [(s, find(cells, "linear", m, dataset, s))
                                                  for s in steps] for m in methods
                                              if m not in STEPLESS},
                {m: find(cells, "linear", m, dataset) for m in
                 [m for m in methods if m in STEPLESS] + list(REFERENCE_LABELS)}, log_x=True)
    plots.append(plot)
    lines += [f"![accuracy vs pretraining steps]({plot.name})", ""]
    if steps:
        curves = probe_curves(cells, main, methods, dataset)
        plot = out / f"{name}-{dataset}-probe-steps.png"
        _plot_curves(plot, f"{dataset}: probe score vs probe steps (each method at its "
                           f"largest pretraining budget)", curves)
        plots.append(plot)
        lines += [f"![probe score vs probe steps]({plot.name})", ""]
    return lines


def probe_curves(cells, rows: Sequence[EvalRecord], methods: Sequence[str],
                 dataset: str) -> Dict[str, Optional[Cell]]:
    """The cells of the probe-score-vs-probe-steps plot: each method at its own largest
    pretraining budget (so none is dropped when budgets differ), the step-less methods and
    the references."""
    curves: Dict[str, Optional[Cell]] = {}
    for m in methods:
        if m in STEPLESS:
            curves[m] = find(cells, "linear", m, dataset)
        else:
            own = max((r.steps for r in rows if r.method == m and r.steps > 0), default=0)
            curves[f"{m} ({own} steps)"] = find(cells, "linear", m, dataset, own)
    curves.update({REFERENCE_LABELS[m]: find(cells, "linear", m, dataset)
                   for m in REFERENCE_LABELS})
    return curves


def _transfer_section(cells, dataset: str) -> List[str]:
    steps = sorted({k[3] for k in cells if k[1] == "B+S+T" and k[2] == dataset
                    and k[0] == "linear" and k[4] == "all" and k[5] == "all"})
    if not steps:
        return []
    header = ["transfer", "method"] + [f"{s} target steps" for s in steps]
    body = []
    for name, method in TRANSFER:
        if method in STEPLESS:
            body.append([name, method, _cell_text(find(cells, "linear", method, dataset))]
                        + [""] * (len(steps) - 1))
        else:
            body.append([name, method] + [_cell_text(find(cells, "linear", method, dataset, s))
                                          for s in steps])
    body += _reference_rows(cells, dataset, len(header), labels=2)
    return [f"### {dataset}: sequential transfer (linear probe)", ""] + _table(header, body)


def _ablation_section(cells, dataset: str, axis: int, title: str, label: str, out: Path,
                      plot_name: str, plots: List[Path], protocol: str = "linear") -> List[str]:
    keys = [k for k in cells if k[0] == protocol and k[2] == dataset and k[axis] != "all"]
    if not keys:
        return []
    values = sorted({k[axis] for k in keys}, key=lambda v: (not str(v).isdigit(),
                                                            int(v) if str(v).isdigit() else 0, v))
    values.append("all")
    methods = _ordered({k[1] for k in keys})
    header = ["method", "target steps"] + [f"{label} {v}" for v in values]
    body, series = [], {}
    for method in methods:
        for steps in sorted({k[3] for k in keys if k[1] == method}):
            row_cells = []
            for value in values:
                coords = dict(augment="all", images="all")
                coords["augment" if axis == 4 else "images"] = value
                row_cells.append(find(cells, protocol, method, dataset, steps, **coords))
            full = row_cells[-1]
            texts = []
            for cell in row_cells:
                text = _cell_text(cell)
                if cell and full and cell is not full:
                    text += f" ({100 * (cell.mean - full.mean):+.1f})"
                texts.append(text)
            body.append([method, str(steps or "–")] + texts)
            series[f"{method} ({steps} steps)" if steps else method] = list(zip(values,
                                                                                row_cells))
    body += _reference_rows(cells, dataset, len(header), labels=2)
    plot = out / plot_name
    if axis == 4:
        _plot_bars(plot, f"{dataset}: {title}", series)
    else:
        plot_lines(plot, f"{dataset}: {title}", "target pretraining images",
                    {m: [(v, c) for v, c in pts] for m, pts in series.items()},
                    {m: find(cells, "linear", m, dataset) for m in REFERENCE_LABELS},
                    categorical=True)
    plots.append(plot)
    note = "in parentheses: change against all augmentations" if axis == 4 else \
        "in parentheses: change against all target images"
    return ([f"### {dataset}: {title}", "", note, ""] + _table(header, body)
            + [f"![{title}]({plot.name})", ""])


def _finetune_section(cells, dataset: str) -> List[str]:
    keys = [k for k in cells if k[0] == "finetune" and k[2] == dataset]
    if not keys:
        return []
    steps = sorted({k[3] for k in keys if k[3] > 0})
    methods = _ordered({k[1] for k in keys})
    header, body = _steps_table(cells, "finetune", dataset, methods, steps)
    mode = next(iter(cells[k] for k in keys)).first.mode
    return ([f"### {dataset}: semi-supervised fine-tuning ({mode}), test accuracy", "",
             "reference rows are linear probes", ""] + _table(header, body))


def build_report(rows: Sequence[EvalRecord], out: Path, name: str, preamble: str = "",
                 ) -> Report:
    """Write ``<out>/<name>.md`` (+ PNGs and ``<name>.csv``) from evaluation rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = group_cells(rows)
    plots: List[Path] = []
    modes = sorted({r.mode for r in rows})
    lines = [f"# {name}: results", ""]
    if preamble:
        lines += [preamble, ""]
    lines += ["Scores in %, mean ± std (std over seeds when several, else over probe "
              f"repeats). Evaluation modes in this report: {', '.join(modes) or 'none'}.", ""]
    for dataset in sorted({r.dataset for r in rows}):
        lines += [f"## {dataset}", ""]
        lines += _linear_section(cells, rows, dataset, out, name, plots)
        lines += _transfer_section(cells, dataset)
        lines += _ablation_section(cells, dataset, 4, "augmentation robustness", "aug.", out,
                                   f"{name}-{dataset}-augmentation.png", plots)
        lines += _ablation_section(cells, dataset, 5, "target-data amount", "n =", out,
                                   f"{name}-{dataset}-data-amount.png", plots)
        lines += _finetune_section(cells, dataset)
    md = "\n".join(lines) + "\n"
    path = out / f"{name}.md"
    path.write_text(md)
    _write_csv(rows, out / f"{name}.csv")
    return Report(md, plots, path)


CSV_FIELDS = ("protocol", "method", "dataset", "steps", "seed", "augment", "images", "score",
              "score_std", "val_score", "best_step", "repeats", "mode", "metric",
              "pretrain_seconds", "checkpoint", "run_id")


def _write_csv(rows: Sequence[EvalRecord], path: Path) -> None:
    write_csv(path, CSV_FIELDS, [[asdict(r)[f] for f in CSV_FIELDS] for r in rows])


def _axes(title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path, ylabel: str = "test score (%)") -> None:
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lines(path: Path, title: str, xlabel: str, series: Dict[str, list],
               flat: Dict[str, Optional[Cell]], log_x: bool = False,
               categorical: bool = False, ylabel: str = "test score (%)") -> None:
    """One line (with error bars) per series of ``(x, cell)`` points, and a dashed
    horizontal line per ``flat`` cell (references)."""
    plt, fig, ax = _axes(title)
    for method, points in series.items():
        pts = [(x, c) for x, c in points if c is not None]
        if not pts:
            continue
        xs = [str(x) for x, _ in pts] if categorical else [x for x, _ in pts]
        ax.errorbar(xs, [100 * c.mean for _, c in pts], yerr=[100 * c.std for _, c in pts],
                    marker="o", capsize=3, label=method)
    for i, (label, cell) in enumerate(flat.items()):
        if cell is not None:
            ax.axhline(100 * cell.mean, linestyle="--", linewidth=1, color=f"C{i + 5}",
                       label=REFERENCE_LABELS.get(label, label))
    if log_x:
        ax.set_xscale("log")
        ticks = sorted({x for points in series.values() for x, c in points if c is not None})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
    ax.set_xlabel(xlabel)
    _save(plt, fig, ax, path, ylabel)


def _plot_curves(path: Path, title: str, cells: Dict[str, Optional[Cell]]) -> None:
    plt, fig, ax = _axes(title)
    for label, cell in cells.items():
        curve = cell.curve() if cell else []
        if curve:
            ax.plot([s for s, _ in curve], [100 * v for _, v in curve], label=label)
    ax.set_xlabel("probe steps")
    _save(plt, fig, ax, path)


def _plot_bars(path: Path, title: str, series: Dict[str, List[Tuple[str, Optional[Cell]]]],
               ) -> None:
    plt, fig, ax = _axes(title)
    width = 0.8 / max(1, len(series))
    presets = [v for v, _ in next(iter(series.values()))] if series else []
    for i, (label, points) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(points))]
        ax.bar(xs, [100 * c.mean if c else 0 for _, c in points], width,
               yerr=[100 * c.std if c else 0 for _, c in points], capsize=2, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(presets))], presets,
                  fontsize=8)
    ax.set_xlabel("augmentations used in target pretraining")
    _save(plt, fig, ax, path)
