"""``hpt-hpc sweep`` (run an experiment file's studies) and ``hpt-hpc report``."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the experiment's config (repeatable).")
@click.option("--executor", type=click.Choice(["auto", "slurm", "local", "debug"]),
              default=None, help="auto: slurm when sbatch is on PATH, else local; debug runs "
                                 "every unit in this process.")
@click.option("--max-parallel", type=int, default=1, show_default=True,
              help="Units running at once (local processes, or the SLURM array's %N).")
@click.option("--dry-run", is_flag=True, help="List what would run and what is skipped.")
@click.option("--profile", help="Cluster profile from slurm/profiles/<name>.yaml.")
@click.option("--partition")
@click.option("--gpus-per-node", type=int)
@click.option("--cpus-per-task", type=int)
@click.option("--mem", help="Memory per node, e.g. 32G.")
@click.option("--time", help="Time limit per unit: minutes or [D-]HH:MM[:SS].")
@click.option("--account")
@click.option("--qos")
@click.option("--log-folder", help="submitit folder (default <output_dir>/slurm-logs/%j).")
@click.option("--container", metavar="IMAGE.sif",
              help="Run every task inside this Apptainer/Singularity image (see launch).")
@click.option("--container-bind", "container_binds", multiple=True, metavar="SRC[:DST[:ro]]",
              help="Another host path to bind (repeatable).")
@click.option("--container-runtime", metavar="NAME|PATH", help="apptainer or singularity.")
def sweep(experiment, overrides, executor, max_parallel, dry_run, profile, partition,
          gpus_per_node, cpus_per_task, mem, time, account, qos, log_folder, container,
          container_binds, container_runtime) -> None:
    """Run the studies of EXPERIMENT (configs/experiments/<name>.yaml): upstream stages,
    then an array of pretraining units, then an array of evaluations. Re-running skips
    finished units (found through MLflow tags) and resumes unfinished ones."""
    from ..experiments.sweep import run_sweep
    from ..launch.options import build_options
    from ..plan.experiment import load_experiment
    spec = load_experiment(experiment, overrides)
    options = build_options(profile, executor=executor, partition=partition,
                            gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, mem=mem,
                            time=time, account=account, qos=qos, container=container,
                            container_binds=list(container_binds),
                            container_runtime=container_runtime)
    plan, record = run_sweep(spec, options, dry_run=dry_run, max_parallel=max_parallel,
                             folder=log_folder)
    click.echo(plan.describe())
    if dry_run:
        click.echo(plan.describe_phases())
        return
    click.echo(f"record: {record.path}")
    if record.executor == "slurm":
        click.echo(f"follow: hpt-hpc status {spec.output_dir}; then: hpt-hpc report "
                   f"{experiment}")


@click.command()
@click.argument("experiment", type=click.Path(dir_okay=False), required=False)
@click.option("--tracking-uri", help="MLflow store (default: the experiment's).")
@click.option("--name", "sweep_name", help="Sweep name (default: the experiment's name).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the report (default <output_dir>/report).")
@click.option("--from-files", is_flag=True,
              help="Read the units' result files instead of MLflow (tracking switched off).")
@click.option("--preamble", help="Text placed under the title (command, machine, date).")
def report(experiment, tracking_uri, sweep_name, out_dir, from_files, preamble) -> None:
    """Markdown report with method x dataset tables and paper-style plots, from MLflow."""
    from ..errors import HptError
    from ..experiments.report import build_report
    from ..experiments.results import rows_from_files, rows_from_mlflow
    from ..experiments.sweep import sweep_tracking
    spec = None
    if experiment:
        from ..plan.experiment import load_experiment
        spec = load_experiment(experiment)
    if spec is None and not (tracking_uri and sweep_name):
        raise click.UsageError("give an EXPERIMENT file, or --tracking-uri and --name")
    name = sweep_name or spec.name
    out = Path(out_dir) if out_dir else spec.output_dir / "report"
    if from_files:
        if spec is None:
            raise click.UsageError("--from-files needs the EXPERIMENT file")
        rows = rows_from_files(spec.output_dir)
    else:
        uri = tracking_uri
        if uri is None:
            target = sweep_tracking(spec)
            if target is None:
                raise click.UsageError("tracking is off in this experiment: use --from-files")
            uri = target.uri
        experiment_name = spec.experiment if spec else name
        rows = rows_from_mlflow(uri, experiment_name, name)
    if not rows:
        raise HptError(f"no finished evaluations of sweep '{name}' yet")
    result = build_report(rows, out, name, preamble or "")
    click.echo(f"report: {result.path} ({len(rows)} evaluations, {len(result.plots)} plots)")
