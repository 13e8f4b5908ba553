"""``hpt-hpc report``: Markdown tables, plots and computed verdicts of a sweep.

Sections appear when the sweep has the units for them: the paper's claims with computed
verdicts (:mod:`.claims`), linear separability (method x pretraining steps) with each
method's gain between its budgets (:mod:`.convergence`), probe score
vs probe steps, sequential transfer (B, B+S, B+T, B+S+T), augmentation robustness,
target-data amount (with each unit's training images and effective MoCo queue),
low-label probing, the augmented-probe protocol check, semi-supervised fine-tuning. Every
table carries the raw-pixel and random-init reference rows; cells are means over
pretraining seeds with 95 % intervals (:mod:`.evidence`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..config.protocols import FINETUNE, LINEAR, LINEAR_MODES, PROTOCOLS

DEFAULT_MODE = PROTOCOLS[LINEAR].default_mode
from ..eval.record import EvalRecord
from ..errors import HptError
from ..files import make_folder, write_text_atomic
from ..plan.methods import METHODS, PAPER_METHODS, REFERENCE_LABELS, TRANSFER, ssl_label
from .claims import MISSING, claims_markdown, judge_claims
from .convergence import convergence_markdown
from .evidence import DIFFERENCE_METHOD, INTERVAL_METHOD, MIN_SEEDS
from .plots import Series, plot_bars, plot_curves, plot_lines
from .results import RESULT_COLUMNS, Cell, find, group_cells, result_rows, ssl_methods
from .tables import markdown_table, write_csv

STEPLESS = tuple(name for name, m in METHODS.items() if not m.uses_steps)
METHOD_NOTE = (f"Cells: mean over pretraining seeds with its {INTERVAL_METHOD} and n, the "
               f"number of seeds; with one seed, mean ± the probe repeats' std (n=1), or the "
               f"mean alone (one probe, or a kNN vote: nothing trained, nothing repeated). The "
               f"seed axis varies target-stage pretraining (data order, augmentation, new "
               f"heads); the upstream stages (base, source) are trained once per base seed "
               f"(one unless a study varies base_seed), and every comparison names the levels "
               f"its spread covers (base × target seeds; a cell over several bases: a t over "
               f"the bases' means, n=B base × T target). Differences: {DIFFERENCE_METHOD} "
               f"(coverage measured: benchmarks/coverage.py). Verdict of a claimed "
               f"difference: supported (interval above 0), contradicted (below 0), "
               f"equivalent (inside ± the claim's margin), unresolved (contains 0, reaches "
               f"beyond the margin), inconclusive (a cell missing, fewer than {MIN_SEEDS} "
               f"seeds shared by its cells, a baseline below the random-init reference of "
               f"its probe mode, or a baseline still gaining by its next budget). A bound "
               f"printed +0.0 or -0.0 lies within 0.05 points of 0, on the side of its sign.")


@dataclass
class Report:
    markdown: str
    plots: List[Path] = field(default_factory=list)
    path: Optional[Path] = None


def _ordered(methods) -> List[str]:
    order = list(PAPER_METHODS) + [m for m in METHODS if m not in PAPER_METHODS]
    return sorted(set(methods), key=lambda m: (order.index(m) if m in order else 99, m))


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> List[str]:
    return markdown_table(header, body) + [""]


def _text(cell: Optional[Cell]) -> str:
    return cell.text() if cell else "–"


def _main(cells, dataset: str, protocol: str = LINEAR) -> list:
    """Keys of the dataset's cells at every default coordinate but steps and method."""
    mode = PROTOCOLS[protocol].default_mode
    return [k for k in cells if k.protocol == protocol and k.dataset == dataset
            and k.augment == "all" and k.images == "all" and k.labels == "all"
            and k.mode == mode]


def _reference_rows(cells, dataset: str, width: int, labels: int = 1,
                    probe_labels: str = "all") -> List[List[str]]:
    """Raw-pixel and random-init rows; the score sits in the first value column."""
    rows = []
    for method, label in REFERENCE_LABELS.items():
        cell = find(cells, LINEAR, method, dataset, labels=probe_labels)
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
            body.append([method, _text(find(cells, protocol, method, dataset))]
                        + [""] * len(steps))
        else:
            body.append([method, ""] + [_text(find(cells, protocol, method, dataset, s))
                                        for s in steps])
    return header, body + _reference_rows(cells, dataset, len(header))


def _linear_section(cells, dataset: str, out: Path, name: str,
                    plots: List[Path]) -> List[str]:
    keys = [k for k in _main(cells, dataset) if k.method not in REFERENCE_LABELS]
    if not keys:
        return []
    steps = sorted({k.steps for k in keys if k.steps > 0})
    methods = _ordered(k.method for k in keys)
    header, body = _steps_table(cells, LINEAR, dataset, methods, steps)
    lines = [f"### {dataset}: {PROTOCOLS[LINEAR].heading}", ""]
    lines += _table(header, body)
    plot = out / f"{name}-{dataset}-pretraining-steps.png"
    plot_lines(plot, f"{dataset}: linear probe vs target pretraining steps",
               "target pretraining steps",
               [Series(m, m, [(s, find(cells, LINEAR, m, dataset, s)) for s in steps])
                for m in methods if m not in STEPLESS],
               {m: find(cells, LINEAR, m, dataset)
                for m in [m for m in methods if m in STEPLESS] + list(REFERENCE_LABELS)},
               log_x=True)
    plots.append(plot)
    lines += [f"![accuracy vs pretraining steps]({plot.name})", ""]
    if steps:
        plot = out / f"{name}-{dataset}-probe-steps.png"
        plot_curves(plot, f"{dataset}: probe score vs probe steps (each method at its "
                          f"largest pretraining budget)",
                    probe_curves(cells, keys, methods, dataset))
        plots.append(plot)
        lines += [f"![probe score vs probe steps]({plot.name})", ""]
    return lines + convergence_markdown(
        cells, dataset, [m for m in methods if m not in STEPLESS], steps)


def probe_curves(cells, keys, methods: Sequence[str],
                 dataset: str) -> Dict[str, Tuple[str, Optional[Cell]]]:
    """The cells of the probe-score-vs-probe-steps plot (label -> (method, cell)): each
    method at its own largest pretraining budget (so none is dropped when budgets
    differ), the step-less methods and the references."""
    curves: Dict[str, Tuple[str, Optional[Cell]]] = {}
    for m in methods:
        if m in STEPLESS:
            curves[m] = (m, find(cells, LINEAR, m, dataset))
        else:
            own = max((k.steps for k in keys if k.method == m and k.steps > 0), default=0)
            curves[f"{m} ({own} steps)"] = (m, find(cells, LINEAR, m, dataset, own))
    curves.update({label: (m, find(cells, LINEAR, m, dataset))
                   for m, label in REFERENCE_LABELS.items()})
    return curves


def _transfer_section(cells, dataset: str) -> List[str]:
    steps = sorted({k.steps for k in _main(cells, dataset) if k.method == "B+S+T"})
    if not steps:
        return []
    header = ["transfer", "method"] + [f"{s} target steps" for s in steps]
    body = []
    for name, method in TRANSFER:
        if method in STEPLESS:
            body.append([name, method, _text(find(cells, LINEAR, method, dataset))]
                        + [""] * (len(steps) - 1))
        else:
            body.append([name, method] + [_text(find(cells, LINEAR, method, dataset, s))
                                          for s in steps])
    body += _reference_rows(cells, dataset, len(header), labels=2)
    return [f"### {dataset}: sequential transfer (linear probe)", ""] + _table(header, body)


def _value_order(values) -> List[str]:
    return sorted(values, key=lambda v: (not str(v).isdigit(),
                                         int(v) if str(v).isdigit() else 0, str(v)))


def _ablation_section(cells, dataset: str, axis: str, title: str, label: str, out: Path,
                      plot_name: str, plots: List[Path]) -> List[str]:
    keys = [k for k in cells if k.protocol == LINEAR and k.dataset == dataset
            and k.labels == "all" and k.mode == DEFAULT_MODE and getattr(k, axis) != "all"
            and (k.augment == "all" or k.images == "all")]
    if not keys:
        return []
    values = _value_order({getattr(k, axis) for k in keys}) + ["all"]
    amounts = axis == "images"
    header = ["method", "target steps"] + [f"{label} {v}" for v in values]
    if amounts:
        header += ["queue (images)"]
    body, series = [], []
    for method in _ordered({k.method for k in keys}):
        for steps in sorted({k.steps for k in keys if k.method == method}):
            row = [find(cells, LINEAR, method, dataset, steps, **{axis: v}) for v in values]
            full = row[-1]
            texts = [_text(c) + (f" ({100 * (c.mean - full.mean):+.1f})"
                                 if c and full and c is not full else "") for c in row]
            if amounts:
                texts.append(", ".join(f"{c.first.queue_size} ({c.first.pretrain_images})"
                                       for c in row if c is not None))
            body.append([method, str(steps or "–")] + texts)
            series.append(Series(f"{method} ({steps} steps)" if steps else method, method,
                                 list(zip(values, row))))
    body += _reference_rows(cells, dataset, len(header), labels=2)
    plot = out / plot_name
    if amounts:
        plot_lines(plot, f"{dataset}: {title}", "target pretraining images", series,
                   {m: find(cells, LINEAR, m, dataset) for m in REFERENCE_LABELS},
                   categorical=True)
        note = ("in parentheses: change against all target images; queue (images): the "
                "effective MoCo queue (capped to what the data fills) and the training "
                "images of each column, a confound of this study")
    else:
        plot_bars(plot, f"{dataset}: {title}", series,
                  "augmentations used in target pretraining")
        note = "in parentheses: change against all augmentations"
    plots.append(plot)
    return ([f"### {dataset}: {title}", "", note, ""] + _table(header, body)
            + [f"![{title}]({plot.name})", ""])


def _labels_section(cells, dataset: str) -> List[str]:
    keys = [k for k in cells if k.protocol == LINEAR and k.dataset == dataset
            and k.labels != "all" and k.mode == DEFAULT_MODE]
    if not keys:
        return []
    values = _value_order({k.labels for k in keys}) + ["all"]
    header = ["method", "target steps"] + [f"{v} labels/class" if v != "all"
                                           else "all labels" for v in values]
    body = []
    for method in _ordered({k.method for k in keys}):
        for steps in sorted({k.steps for k in keys if k.method == method}):
            if method in REFERENCE_LABELS:
                continue
            body.append([method, str(steps or "–")] + [
                _text(find(cells, LINEAR, method, dataset, steps, labels=v)) for v in values])
    for method, label in REFERENCE_LABELS.items():
        body.append([label, "–"] + [_text(find(cells, LINEAR, method, dataset, labels=v))
                                    for v in values])
    return ([f"### {dataset}: low-label probing (cached linear probe)", "",
             "probe training labels per class, seeded, every class covered", ""]
            + _table(header, body))


def _protocol_section(cells, dataset: str, steps: Sequence[int], mode: str) -> List[str]:
    """Another probe ``mode`` (augmented: the paper's protocol; knn) against cached mode:
    the cells side by side and whether the claims' verdicts agree."""
    keys = [k for k in cells if k.dataset == dataset and k.mode == mode and k.labels == "all"]
    if not keys:
        return []
    body = []
    for k in sorted(keys, key=lambda k: (_ordered([k.method]), k.steps)):
        cached = find(cells, LINEAR, k.method, dataset, k.steps or None)
        body.append([k.method, str(k.steps or "–"), _text(cells[k]), _text(cached)])
    title = PROTOCOLS[LINEAR].mode(mode).title or cells[keys[0]].first.evaluation
    lines = [f"### {dataset}: protocol check ({title} vs {DEFAULT_MODE})", ""]
    lines += _table(["method", "target steps", mode, DEFAULT_MODE], body)
    other = {j.comparison: j.verdict for c in judge_claims(cells, dataset, steps, mode)
             for j in c.judgements if MISSING not in j.reasons}
    cached = {j.comparison: j.verdict for c in judge_claims(cells, dataset, steps)
              for j in c.judgements if MISSING not in j.reasons}
    shared = sorted(set(other) & set(cached))
    agree = [c for c in shared if other[c] == cached[c]]
    differ = "; ".join(f"{c} ({mode} {other[c]}, cached {cached[c]})"
                       for c in shared if c not in agree)
    lines += [f"Verdicts of the comparisons both modes can make: {len(agree)} of "
              f"{len(shared)} agree" + (f"; they differ on: {differ}" if differ else "") + ".",
              ""]
    return lines


def _finetune_section(cells, dataset: str) -> List[str]:
    keys = _main(cells, dataset, FINETUNE)
    if not keys:
        return []
    steps = sorted({k.steps for k in keys if k.steps > 0})
    header, body = _steps_table(cells, FINETUNE, dataset, _ordered({k.method for k in keys}),
                                steps)
    labels = cells[keys[0]].first.mode.replace(FINETUNE, "").strip(" ()")
    return ([f"### {dataset}: {PROTOCOLS[FINETUNE].heading} ({labels}), test accuracy", "",
             "reference rows are linear probes", ""] + _table(header, body))


def build_report(rows: Sequence[EvalRecord], out: Path, name: str, preamble: str = "",
                 output_dir: Optional[Path] = None,
                 caveats: Optional[Dict[str, str]] = None) -> Report:
    """Write ``<out>/<name>.md`` (+ PNGs and ``<name>.csv``) from evaluation records;
    paths below the experiment's ``output_dir`` are named relative to it; ``caveats``:
    the experiment file's, printed with the claims' verdicts."""
    ssl = ssl_methods(rows)
    if len(ssl) > 1:  # a cell would average two methods' seeds
        raise HptError(f"report: the evaluations of '{name}' come from {len(ssl)} ssl "
                       f"methods ({', '.join(ssl)}); report one at a time with --ssl "
                       f"<method>")
    out = Path(out)
    make_folder(out)
    cells = group_cells(rows)
    plots: List[Path] = []
    modes = sorted({r.mode for r in rows})
    lines = [f"# {name}: results", ""]
    if ssl:
        lines += [f"Self-supervised method of every pretraining stage: {ssl_label(ssl[0])} "
                  f"(`ssl: {ssl[0]}`).", ""]
    if preamble:
        lines += [preamble, ""]
    lines += [f"Scores in %. {METHOD_NOTE} Evaluation modes in this report: "
              f"{', '.join(modes) or 'none'}.", ""]
    for dataset in sorted({r.dataset for r in rows}):
        steps = sorted({k.steps for k in _main(cells, dataset) if k.steps > 0})
        lines += [f"## {dataset}", "", "### The paper's claims: computed verdicts", ""]
        lines += claims_markdown(judge_claims(cells, dataset, steps), caveats) or ["(no claim can be "
                                                                          "judged)", ""]
        lines += _linear_section(cells, dataset, out, name, plots)
        lines += _transfer_section(cells, dataset)
        lines += _ablation_section(cells, dataset, "augment", "augmentation robustness",
                                   "aug.", out, f"{name}-{dataset}-augmentation.png", plots)
        lines += _ablation_section(cells, dataset, "images", "target-data amount", "n =",
                                   out, f"{name}-{dataset}-data-amount.png", plots)
        lines += _labels_section(cells, dataset)
        for mode in LINEAR_MODES[1:]:
            lines += _protocol_section(cells, dataset, steps, mode)
        lines += _finetune_section(cells, dataset)
    md = "\n".join(lines) + "\n"
    path = out / f"{name}.md"
    write_text_atomic(path, md)
    _write_csv(rows, out / f"{name}.csv", output_dir)
    return Report(md, plots, path)


def _write_csv(rows: Sequence[EvalRecord], path: Path, output_dir: Optional[Path]) -> None:
    """One row per evaluation (:func:`.results.result_rows`; ``_pct``: percent; paths
    relative to the experiment's output folder)."""
    table = result_rows(rows, output_dir)
    write_csv(path, list(RESULT_COLUMNS), [list(row.values()) for row in table])
