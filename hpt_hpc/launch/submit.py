"""Submit stages as submitit jobs: preflight checks, chains with ``afterok``, sweep arrays.

Everything that can be wrong with a launch (config, dataset paths, init files, partition,
a dead controller) is checked here, before anything is submitted.
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..config import ExperimentConfig, config_to_dict, load_config, stage_settings
from ..errors import HptError
from .options import SchedulerOptions, executor_parameters, resolve_executor
from .record import JobEntry, LaunchRecord
from .sweep import SweepCell, cell_overrides, expand_sweep

log = logging.getLogger(__name__)

SLURM_TIMEOUT_S = 5


@dataclass
class StagePlan:
    """One stage to submit: one config per sweep cell (one job each)."""

    stage: str
    configs: List[ExperimentConfig]
    cells: List[SweepCell]


def _run(cmd: Sequence[str], check: bool = True) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True,
                             timeout=SLURM_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise HptError(f"'{cmd[0]}' is not installed or not on PATH; use --executor local "
                       f"or debug to run without SLURM") from exc
    except subprocess.TimeoutExpired as exc:
        raise HptError(f"SLURM did not answer '{' '.join(cmd)}' within {SLURM_TIMEOUT_S} s: "
                       f"the controller (slurmctld) is down or unreachable") from exc
    if check and out.returncode != 0:
        raise HptError(f"'{' '.join(cmd)}' failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def check_slurm(partition: Optional[str]) -> List[str]:
    """Fail within seconds when the controller is down or the partition unknown."""
    ping = _run(["scontrol", "ping"], check=False)
    if " is UP" not in ping:
        status = " ".join(ln for ln in ping.splitlines() if "Slurmctld" in ln) or ping.strip()
        raise HptError(f"the SLURM controller is not responding ({status or 'no answer'}); "
                       f"nothing was submitted. Is slurmctld running? (dev cluster: "
                       f"bash slurm/dev-cluster/start.sh)")
    partitions = [p.rstrip("*") for p in _run(["sinfo", "-h", "-o", "%P"]).split()]
    if partition and partition not in partitions:
        raise HptError(f"unknown partition '{partition}'; this cluster has: "
                       f"{', '.join(partitions) or 'none'}")
    return partitions


def check_data(configs: Sequence[ExperimentConfig], stage: str) -> None:
    """Every distinct dataset/batch of the stage's configs is readable and holds one global
    batch (sweep cells sharing a dataset are listed once)."""
    from ..train.pipeline import stage_records
    seen = set()
    for cfg in configs:
        key = (repr(cfg.datasets[cfg.stages[stage].dataset]),
               stage_settings(cfg, stage)["batch_size"])
        if key not in seen:
            seen.add(key)
            stage_records(cfg, stage)


def check_init(cfg: ExperimentConfig, stage: str, chained: Sequence[str]) -> None:
    init = cfg.stages[stage].init
    if not init or "://" in init or init.startswith(("models:/", "runs:/")):
        return  # registry and run URIs resolve when the job starts
    if init.startswith("stage:"):
        ref = init.split(":", 1)[1]
        final = Path(cfg.output_dir) / ref / "checkpoints" / "final.pt"
        if ref not in chained and not final.is_file():
            raise HptError(f"stage '{stage}' starts from stage '{ref}', which is neither in "
                           f"this --chain nor finished ({final} missing)")
    elif not Path(init).is_file():
        raise HptError(f"stage '{stage}': init checkpoint '{init}' does not exist; copy the "
                       f"file here first (nothing is downloaded at run time)")


def plan_stages(config_path: str, stages: Sequence[str], overrides: Sequence[str],
                registry_pipeline: Optional[str] = None) -> List[StagePlan]:
    """Validate everything and build the per-stage configs (sweep cells on the last stage).

    In a chain each stage starts from the one before it: through the MLflow registry
    (``models:/<name>@<pipeline>-<stage>``) when ``registry_pipeline`` is given, else from
    the previous stage's checkpoint file (``stage:<name>``).
    """
    base_cfg = load_config(config_path, overrides)
    plans = []
    for i, stage in enumerate(stages):
        if stage not in base_cfg.stages:
            raise HptError(f"stage '{stage}' is not defined in {config_path} "
                           f"(defined: {', '.join(base_cfg.stages) or 'none'})")
        chain_overrides = list(overrides)
        if i > 0 and registry_pipeline:
            from ..tracking import stage_model_uri
            chain_overrides.append(f"stages.{stage}.init="
                                   f"{stage_model_uri(base_cfg, registry_pipeline, stages[i - 1])}")
        elif i > 0:
            chain_overrides.append(f"stages.{stage}.init=stage:{stages[i - 1]}")
        cfg = load_config(config_path, chain_overrides)
        check_init(cfg, stage, stages[:i])
        is_last = i == len(stages) - 1
        cells = expand_sweep(cfg, stage) if is_last else [SweepCell("default", {}, [])]
        configs = [load_config(config_path, cell_overrides(chain_overrides, c)) for c in cells]
        check_data(configs, stage)
        plans.append(StagePlan(stage, configs, cells))
    return plans


def make_executor(kind: str, folder: Path, options: SchedulerOptions, name: str):
    """A submitit executor; with ``options.container`` every task runs inside that image
    (``folder`` and ``options.container_binds`` bound in)."""
    import submitit
    python = {}
    if options.container:
        from .container import task_python
        python[f"{kind}_python"] = task_python(options, kind, folder)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind, **python)
    executor.update_parameters(**executor_parameters(options, name))
    return executor


def launch(config_path: str, stages: Sequence[str], options: SchedulerOptions,
           overrides: Sequence[str] = (), folder: Optional[str] = None) -> LaunchRecord:
    """Submit ``stages`` (one, or a chain with ``afterok``); return the written record."""
    from ..tracking import prepare_tracking, start_pipeline_run
    from .job import StageJob
    kind = resolve_executor(options)
    if options.container:
        from .container import preflight
        preflight(options, kind)
    base_cfg = load_config(config_path, overrides)
    if stages and stages[-1] in base_cfg.stages:
        writers = len(expand_sweep(base_cfg, stages[-1]))  # rank 0 of each task logs
    else:
        writers = 1
    uri = prepare_tracking(base_cfg, num_tasks=writers, nodes=options.nodes)
    if uri:  # every job and sweep cell logs to the launch's one store
        overrides = list(overrides) + [f"tracking.uri={uri}"]
        base_cfg = load_config(config_path, overrides)
    plans = plan_stages(config_path, stages, overrides,
                        registry_pipeline=base_cfg.name if uri else None)
    if kind == "slurm":
        check_slurm(options.partition)
    if options.container:
        options = _with_job_binds(options, [c for p in plans for c in p.configs], uri)
    parent = start_pipeline_run(base_cfg) if uri else None
    output_dir = Path(base_cfg.output_dir).resolve()
    log_folder = Path(folder or output_dir / "slurm-logs" / "%j").resolve()
    record = LaunchRecord.new(output_dir, kind, config_path, list(stages), str(log_folder))
    record.tracking_uri, record.pipeline_run_id = uri or "", parent or ""
    previous: List[str] = []
    submitted = {}
    for plan in plans:
        executor = make_executor(kind, log_folder, options, f"hpt-{plan.stage}")
        if previous and kind == "slurm":
            executor.update_parameters(slurm_additional_parameters={
                **options.extra, "dependency": "afterok:" + ":".join(previous),
                "kill-on-invalid-dep": "yes"})
        elif previous:
            _wait_for(record, submitted, previous, plan.stage)
        dicts = [config_to_dict(c) for c in plan.configs]
        labels = [plan.stage if c.name == "default" else f"{plan.stage}-{c.name}"
                  for c in plan.cells]
        n = len(dicts)
        if n == 1:
            jobs = [executor.submit(StageJob(), dicts[0], plan.stage, None, parent, labels[0])]
        else:
            jobs = executor.map_array(StageJob(), dicts, [plan.stage] * n, [None] * n,
                                      [parent] * n, labels)
        if kind == "debug":  # in this process, now (submitit's DebugJob runs on result())
            for job in jobs:
                job.results()
        for job, cell, cfg in zip(jobs, plan.cells, plan.configs):
            submitted[str(job.job_id)] = record.live[str(job.job_id)] = job
            record.jobs.append(JobEntry(stage=plan.stage, job_id=str(job.job_id),
                                        cell=cell.name, depends_on=list(previous),
                                        output_dir=str(Path(cfg.output_dir).resolve()),
                                        stdout=str(job.paths.stdout),
                                        stderr=str(job.paths.stderr),
                                        tasks=options.world_size))
        previous = [str(j.job_id).split("_")[0] for j in jobs[:1]] if len(jobs) > 1 \
            else [str(jobs[0].job_id)]
    record.save()
    return record


def _with_job_binds(options: SchedulerOptions, configs: Sequence[ExperimentConfig],
                    uri: Optional[str]) -> SchedulerOptions:
    """The options plus binds of everything the jobs touch (outputs created first)."""
    import dataclasses
    from .container import config_paths
    for cfg in configs:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    paths = [str(p) for p in config_paths(configs, uri)]
    return dataclasses.replace(options, container_binds=paths + list(options.container_binds))


def _wait_for(record: LaunchRecord, submitted: dict, job_ids: List[str], stage: str) -> None:
    """Local/debug executors have no dependencies: run the chain in order, failing fast."""
    for entry in record.jobs:
        if entry.job_id in job_ids:
            try:
                submitted[entry.job_id].results()
            except Exception as exc:  # noqa: BLE001 - report which upstream failed
                raise HptError(f"stage '{entry.stage}' (job {entry.job_id}) failed, so "
                               f"'{stage}' was not started: {exc}") from exc


def describe(record: LaunchRecord) -> str:
    """Job ids and log locations, for the terminal."""
    lines = [f"launched with executor '{record.executor}'; record: {record.path}"]
    if record.tracking_uri:
        lines.append(f"MLflow: {record.tracking_uri} (pipeline run {record.pipeline_run_id})")
    for e in record.jobs:
        dep = f" after {','.join(e.depends_on)}" if e.depends_on else ""
        cell = "" if e.cell == "default" else f" [{e.cell}]"
        lines.append(f"  {e.stage}{cell}: job {e.job_id}{dep}\n    stdout {e.stdout}\n"
                     f"    output {e.output_dir}")
    return "\n".join(lines)

