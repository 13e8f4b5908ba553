"""``hpt-hpc sweep`` (run an experiment file's studies) and ``hpt-hpc report``."""
from __future__ import annotations

from pathlib import Path

import click

from ..config.schema import SSL_METHODS
from .scheduler import pop_scheduler, scheduler_options


@click.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the experiment's config (repeatable).")
@click.option("--max-parallel", type=click.IntRange(min=1),
              help="Units running at once: local processes across all phases (default: "
                   "the cores available to this process, at most 8 with a sqlite tracking "
                   "store, 1 with one on a network filesystem), or the SLURM array's %N "
                   "(default 1).")
@click.option("--dry-run", is_flag=True, help="List what would run and what is skipped.")
@scheduler_options
def sweep(experiment, overrides, max_parallel, dry_run, **scheduler) -> None:
    """Run the studies of EXPERIMENT (configs/experiments/<name>.yaml): upstream stages,
    then arrays of pretraining units (each waiting only for the stage it starts from), then
    an array of evaluations. Re-running skips finished units (found through MLflow tags)
    and resumes unfinished ones."""
    from ..experiments.sweep import run_sweep
    from ..launch.executors import executor_named
    from ..plan.experiment import load_experiment
    options, log_folder = pop_scheduler(scheduler)
    spec = load_experiment(experiment, overrides)
    plan, record = run_sweep(spec, options, dry_run=dry_run, max_parallel=max_parallel,
                             folder=log_folder)
    click.echo(plan.describe())
    if dry_run:
        click.echo(plan.describe_phases())
        return
    click.echo(f"record: {record.path}")
    if executor_named(record.executor).detached(wait=True):
        click.echo(f"follow: hpt-hpc status {spec.output_dir} --watch")
    shown = f" --ssl {spec.ssl}" if any(o.split("=")[0].strip() == "ssl"
                                         for o in overrides) else ""
    click.echo(f"next: hpt-hpc report {experiment}{shown}")


@click.command()
@click.argument("experiment", type=click.Path(dir_okay=False), required=False)
@click.option("--tracking-uri", help="MLflow store (default: the experiment's).")
@click.option("--name", "sweep_name", help="Sweep name (default: the experiment's name).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the report (default <output_dir>/report).")
@click.option("--from-files", is_flag=True,
              help="Read the units' result files instead of MLflow (tracking switched off).")
@click.option("--preamble", help="Text placed under the title (command, machine, date).")
@click.option("--all-units", is_flag=True,
              help="Also the evaluations of units the EXPERIMENT file no longer plans "
                   "(by default they are left out, and counted).")
@click.option("--ssl", type=click.Choice(SSL_METHODS),
              help="Only the evaluations of checkpoints trained with this ssl method, and "
                   "the references (default: the experiment file's `ssl`).")
def report(experiment, tracking_uri, sweep_name, out_dir, from_files, preamble, ssl,
           all_units) -> None:
    """Markdown report with method x dataset tables and paper-style plots, from MLflow;
    one CSV row per evaluation (with the EXPERIMENT file, paths in it are relative to its
    output folder). With the file, only the evaluations of the units it plans."""
    from ..errors import HptError
    from ..experiments.report import build_report
    from ..experiments.results import (Planned, rows_from_files, rows_from_mlflow,
                                       ssl_methods, ssl_of)
    from ..experiments.sweep import sweep_tracking
    from ..tracking.store import normalize_uri
    spec, keep = None, (lambda unit: True)
    if experiment:
        from ..plan.experiment import load_experiment
        spec = load_experiment(experiment)
        if not all_units:  # the units of the ssl method reported (a sweep run --set ssl=)
            keep = Planned.by(load_experiment(experiment, [f"ssl={ssl}"]) if ssl else spec)
    if spec is None and not (tracking_uri and sweep_name and out_dir):
        missing = [o for o, v in (("--tracking-uri", tracking_uri), ("--name", sweep_name),
                                  ("--out", out_dir)) if not v]
        raise HptError(f"report: give an EXPERIMENT file, or --tracking-uri, --name and "
                       f"--out (missing: {', '.join(missing)})")
    name = sweep_name or spec.name
    out = Path(out_dir) if out_dir else spec.output_dir / "report"
    if from_files:
        if spec is None:
            raise click.UsageError("--from-files needs the EXPERIMENT file")
        rows = rows_from_files(spec.output_dir, keep)
    else:
        uri = normalize_uri(tracking_uri) if tracking_uri else None
        if uri is None:
            target = sweep_tracking(spec)
            if target is None:
                raise click.UsageError("tracking is off in this experiment: use --from-files")
            uri = target.uri
        experiment_name = spec.experiment if spec else name
        rows = rows_from_mlflow(uri, experiment_name, name, keep)
    ssl = ssl or (spec.ssl if spec is not None else None)
    if ssl:  # the references belong to every method's report
        rows = [r for r in rows if ssl_of(r) in ("", ssl)]
    if not rows or (ssl and not ssl_methods(rows)):
        raise HptError(f"no finished evaluations of sweep '{name}'"
                       f"{f' with ssl {ssl}' if ssl else ''} yet")
    left = sorted(getattr(keep, "left_out", ()))
    if left:
        click.echo(f"report: left out {len(left)} evaluation(s) of units {experiment} no "
                   f"longer plans ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''});"
                   f" --all-units includes them", err=True)
    result = build_report(rows, out, name, preamble or "",
                          spec.output_dir if spec is not None else None,
                          spec.caveats if spec is not None else None)
    click.echo(f"report: {result.path} ({len(rows)} evaluations, {len(result.plots)} plots)")
