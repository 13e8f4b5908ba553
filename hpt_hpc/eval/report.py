"""Results tables (Markdown + CSV) and the probe-accuracy-vs-pretraining-steps plot."""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence


@dataclass
class ResultRow:
    """One probed model: its method, target pretraining steps and probe scores (%)."""

    method: str
    target_steps: int
    test_acc: float
    val_acc: float
    best_probe_step: int
    pretrain_seconds: float = 0.0
    note: str = ""


def write_csv(rows: Sequence[ResultRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0]).keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def markdown_table(rows: Sequence[ResultRow], title: str, preamble: str = "") -> str:
    """Rows as a Markdown table (accuracies in %)."""
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += ["| method | target steps | test acc. (%) | val acc. (%) | best probe step "
              "| pretrain time (s) | note |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.target_steps} | {100 * r.test_acc:.1f} | "
                     f"{100 * r.val_acc:.1f} | {r.best_probe_step} | {r.pretrain_seconds:.0f} "
                     f"| {r.note} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_steps(rows: Sequence[ResultRow], path: Path, title: str,
                           references: Optional[Dict[str, float]] = None) -> None:
    """Probe test accuracy against target pretraining steps, one line per method;
    reference rows (raw pixels, random init, Base) as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, List[ResultRow]] = {}
    for row in rows:
        if row.target_steps > 0:
            series.setdefault(row.method, []).append(row)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, points in series.items():
        points = sorted(points, key=lambda r: r.target_steps)
        ax.plot([p.target_steps for p in points], [100 * p.test_acc for p in points],
                marker="o", label=method)
    for i, (name, acc) in enumerate((references or {}).items()):
        ax.axhline(100 * acc, linestyle="--", linewidth=1, color=f"C{i + len(series)}",
                   label=name)
    ax.set_xscale("log")
    steps = sorted({r.target_steps for pts in series.values() for r in pts})
    if steps:
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
    ax.set_xlabel("target pretraining steps")
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
