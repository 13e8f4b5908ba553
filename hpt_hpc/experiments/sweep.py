"""``hpt-hpc sweep``: run an experiment file's studies as SLURM arrays (or locally).

Order: upstream stages (base, then source; ``afterok``) -> one array of pretraining units
(``afterok`` on the upstream jobs) -> one array of evaluations (``afterany`` on the
pretraining array: an evaluation whose checkpoint is missing fails alone with a clear
message instead of cancelling the others). Units whose MLflow run (tag ``hpt.unit``) is
FINISHED are skipped; unfinished pretraining resumes from its ``last.pt``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from ..errors import HptError
from ..launch.options import SchedulerOptions, resolve_executor
from ..launch.record import JobEntry, LaunchRecord
from .spec import SweepSpec, prepare_offline_data
from .units import (METHODS, EvalUnit, Expansion, PretrainUnit, expand, unit_config,
                    upstream_config)

log = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """What a sweep will run now, and what it skips because it already finished."""

    expansion: Expansion
    upstream: List[str]
    pretrain: List[PretrainUnit]
    evals: List[EvalUnit]
    finished: Set[str] = field(default_factory=set)

    def describe(self) -> str:
        e = self.expansion
        return (f"units: {len(e.pretrain)} pretraining, {len(e.evals)} evaluations; "
                f"to run: upstream [{', '.join(self.upstream) or 'none'}], "
                f"{len(self.pretrain)} pretraining, {len(self.evals)} evaluations "
                f"({len(self.finished)} finished units skipped)")


def finished_units(spec: SweepSpec, uri: Optional[str]) -> Set[str]:
    """Unit ids with a FINISHED run tagged ``hpt.sweep=<name>`` in the MLflow store (with
    tracking off: units whose final checkpoint or result file exists)."""
    if not uri:
        return _finished_on_disk(spec)
    from ..tracking.runs import client_for
    client = client_for(uri)
    experiment = client.get_experiment_by_name(spec.config["tracking"]["experiment"])
    if experiment is None:
        return set()
    done, token = set(), None
    while True:
        page = client.search_runs([experiment.experiment_id],
                                  f"tags.`hpt.sweep` = '{spec.name}' and "
                                  f"attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        done.update(r.data.tags.get("hpt.unit") for r in page if r.data.tags.get("hpt.unit"))
        token = page.token
        if not token:
            return done


def _finished_on_disk(spec: SweepSpec) -> Set[str]:
    from .units import upstream_checkpoint
    done = {f"upstream-{s}" for s in ("base", "source")
            if upstream_checkpoint(spec, s).is_file()}
    units = spec.output_dir / "units"
    done.update(p.parent.parent.parent.name for p in units.glob("*/target/checkpoints/final.pt"))
    done.update(p.stem for p in units.glob("*/results/*.json"))
    return done


def plan_sweep(spec: SweepSpec, uri: Optional[str]) -> SweepPlan:
    """Expand the studies and drop every unit that already finished."""
    expansion = expand(spec)
    done = finished_units(spec, uri)
    upstream = [s for s in expansion.upstream if f"upstream-{s}" not in done]
    pretrain = [u for u in expansion.pretrain if u.unit_id not in done]
    evals = [u for u in expansion.evals if u.unit_id not in done]
    return SweepPlan(expansion, upstream, pretrain, evals,
                     finished={u for u in done if u})


def _registry_init(spec: SweepSpec, uri: Optional[str], stage: str) -> Optional[str]:
    """Cells start from the upstream checkpoint through the MLflow registry when tracked."""
    if not uri or "checkpoint" in spec.upstream.get(stage, {}):
        return None
    from ..tracking import stage_model_uri
    return stage_model_uri(spec.base_config(), spec.name, stage)


def _jobs(spec: SweepSpec, plan: SweepPlan, uri: Optional[str], parent: Optional[str]):
    """(phase, label, callable, args) per task, grouped by phase."""
    from ..launch.job import StageJob
    from .tasks import EvalJob
    phases: Dict[str, List[tuple]] = {"upstream-base": [], "upstream-source": [],
                                      "pretrain": [], "eval": []}
    up = upstream_config(spec)
    inits = {stage: _registry_init(spec, uri, stage) for stage in spec.upstream}
    for stage in plan.upstream:
        tags = {"hpt.sweep": spec.name, "hpt.unit": f"upstream-{stage}",
                "hpt.unit_kind": "upstream"}
        init = inits.get("base") if stage == "source" else None
        phases[f"upstream-{stage}"].append(
            (stage, StageJob(), (up, stage, init, parent, stage, "MoCo-v2 " + stage, tags)))
    for unit in plan.pretrain:
        init_stage = METHODS[unit.method].init
        config = unit_config(spec, unit, inits.get(init_stage) if init_stage else None)
        phases["pretrain"].append((unit.unit_id, StageJob(),
                                   (config, "target", None, parent, unit.unit_id, unit.method,
                                    unit.tags(spec.name))))
    for unit in plan.evals:
        config = unit_config(spec, unit)
        config["stages"] = {}
        phases["eval"].append((unit.unit_id, EvalJob(),
                               (config, unit.to_dict(), parent, unit.tags(spec.name))))
    return phases


def run_sweep(spec: SweepSpec, options: SchedulerOptions, dry_run: bool = False,
              max_parallel: int = 1, folder: Optional[str] = None) -> tuple:
    """Plan, then submit (slurm) or run (local: ``max_parallel`` tasks at a time; debug: in
    this process). Returns ``(plan, record)``; ``record`` is None for a dry run."""
    from ..tracking import prepare_tracking, start_pipeline_run
    kind = resolve_executor(options)
    if options.container:
        from ..launch.container import preflight
        preflight(options, kind)
    if not dry_run:
        prepare_offline_data(spec)
    cfg = spec.base_config()
    writers = max_parallel if kind != "slurm" else min(options.array_parallelism, max_parallel)
    uri = prepare_tracking(cfg, num_tasks=max(1, writers), nodes=options.nodes) \
        if not dry_run or (spec.output_dir / "mlflow.db").exists() else None
    if uri:
        spec.config["tracking"]["uri"] = uri
    plan = plan_sweep(spec, uri)
    if dry_run:
        return plan, None
    if kind == "slurm":
        from ..launch.submit import check_slurm
        check_slurm(options.partition)
    parent = start_pipeline_run(spec.base_config(), spec.name) if uri else None
    log_folder = Path(folder or spec.output_dir / "slurm-logs" / "%j").resolve()
    record = LaunchRecord.new(spec.output_dir, kind, str(spec.path), ["sweep"], str(log_folder))
    record.tracking_uri, record.pipeline_run_id = uri or "", parent or ""
    phases = _jobs(spec, plan, uri, parent)
    if options.container:
        options = _container_binds(spec, options, uri)
    if kind == "slurm":
        import dataclasses
        options = dataclasses.replace(options, array_parallelism=max_parallel)
        _submit_slurm(phases, options, log_folder, record)
    else:
        _run_local(kind, phases, options, log_folder, record, max_parallel)
    record.save()
    return plan, record


def _container_binds(spec: SweepSpec, options: SchedulerOptions, uri: Optional[str]):
    """Bind the datasets, the sweep's output folder, given upstream checkpoints and the
    sqlite store into every task's container."""
    import dataclasses
    from ..launch.container import config_paths
    from .units import upstream_checkpoint
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    paths = config_paths([spec.base_config()], uri)
    paths += [upstream_checkpoint(spec, s) for s in spec.upstream
              if "checkpoint" in spec.upstream[s]]
    return dataclasses.replace(options, container_binds=[str(p) for p in paths]
                               + list(options.container_binds))


def _submit_slurm(phases, options, log_folder: Path, record: LaunchRecord) -> None:
    from ..launch.submit import make_executor
    upstream_ids: List[str] = []
    pretrain_ids: List[str] = []
    for phase, tasks in phases.items():
        if not tasks:
            continue
        executor = make_executor("slurm", log_folder, options, f"hpt-{phase}")
        if phase.startswith("upstream") or phase == "pretrain":
            after = upstream_ids
            dep = {"dependency": "afterok:" + ":".join(after),
                   "kill-on-invalid-dep": "yes"} if after else {}
        else:
            after = pretrain_ids
            dep = {"dependency": "afterany:" + ":".join(after)} if after else {}
        if dep:
            executor.update_parameters(slurm_additional_parameters={**options.extra, **dep})
        jobs = _submit(executor, tasks)
        ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
        if phase.startswith("upstream"):
            upstream_ids = ids  # source waits for base, cells for the last upstream stage
        elif phase == "pretrain":
            pretrain_ids = ids
        _record(record, phase, tasks, jobs, after, options)


def _submit(executor, tasks):
    callables = [t[1] for t in tasks]
    if len(tasks) == 1:
        return [executor.submit(callables[0], *tasks[0][2])]
    columns = list(zip(*(t[2] for t in tasks)))
    return executor.map_array(callables[0], *columns)


def _record(record: LaunchRecord, phase: str, tasks, jobs, after, options) -> None:
    for (label, _, args), job in zip(tasks, jobs):
        record.live[str(job.job_id)] = job
        out = args[0]["output_dir"] if isinstance(args[0], dict) else ""
        record.jobs.append(JobEntry(stage=phase, job_id=str(job.job_id), cell=label,
                                    depends_on=list(after), output_dir=out,
                                    stdout=str(job.paths.stdout), stderr=str(job.paths.stderr),
                                    tasks=options.world_size))


def _run_local(kind: str, phases, options, log_folder: Path, record: LaunchRecord,
               max_parallel: int) -> None:
    """Phases in order; inside a phase at most ``max_parallel`` tasks at once (local) or
    one after another in this process (debug). Failures are collected, not fatal, except
    in upstream stages (everything depends on them)."""
    failures = []
    for phase, tasks in phases.items():
        for start in range(0, len(tasks), max(1, max_parallel)):
            batch = tasks[start:start + max(1, max_parallel)]
            if kind == "debug":
                for label, fn, args in batch:
                    try:
                        fn(*args)
                        record.jobs.append(JobEntry(stage=phase, job_id="inline", cell=label))
                    except Exception as exc:  # noqa: BLE001 - report all failed units
                        _fail(failures, phase, label, exc)
                continue
            from ..launch.submit import make_executor
            executor = make_executor("local", log_folder, options, f"hpt-{phase}")
            jobs = [executor.submit(fn, *args) for _, fn, args in batch]
            _record(record, phase, batch, jobs, [], options)
            for (label, _, _), job in zip(batch, jobs):
                try:
                    job.results()
                except Exception as exc:  # noqa: BLE001
                    _fail(failures, phase, label, exc)
    if failures:
        record.save()
        raise HptError(f"{len(failures)} sweep unit(s) failed: " + "; ".join(failures[:5]) +
                       " -- re-run the same command: finished units are skipped")


def _fail(failures: List[str], phase: str, label: str, exc: Exception) -> None:
    log.error("sweep %s %s failed: %s", phase, label, exc)
    failures.append(f"{phase} {label}: {str(exc).strip().splitlines()[-1] if str(exc) else exc!r}")
    if phase.startswith("upstream"):
        raise HptError(f"upstream stage '{label}' failed, so nothing depending on it was "
                       f"run: {exc}") from exc
