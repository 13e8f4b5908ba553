"""``hpt-hpc launch``/``status``/``cancel``: submit stages with submitit, follow them."""
from __future__ import annotations

import click

from ..config.schema import STAGE_NAMES

STAGES = list(STAGE_NAMES)


def _extra(values):
    extra = {}
    for item in values:
        key, _, value = item.partition("=")
        extra[key.lstrip("-")] = value or None
    return extra


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--stage", type=click.Choice(STAGES), help="The stage to run.")
@click.option("--chain", help="Comma-separated stages submitted at once with afterok "
                              "dependencies, e.g. base,source,target.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--executor", type=click.Choice(["auto", "slurm", "local", "debug"]),
              default=None, help="auto: slurm when sbatch is on PATH, else local.")
@click.option("--profile", help="Cluster profile from slurm/profiles/<name>.yaml.")
@click.option("--partition")
@click.option("--nodes", type=int)
@click.option("--gpus-per-node", type=int)
@click.option("--tasks-per-node", type=int, help="DDP ranks per node on CPU nodes.")
@click.option("--cpus-per-task", type=int)
@click.option("--mem", help="Memory per node, e.g. 32G.")
@click.option("--time", help="Time limit: minutes or [D-]HH:MM[:SS].")
@click.option("--account")
@click.option("--qos")
@click.option("--constraint")
@click.option("--sbatch", "sbatch_extra", multiple=True, metavar="OPTION=VALUE",
              help="Extra sbatch option, e.g. --sbatch exclusive= (repeatable).")
@click.option("--log-folder", help="submitit folder (default <output_dir>/slurm-logs/%j).")
@click.option("--container", metavar="IMAGE.sif",
              help="Run every task inside this Apptainer/Singularity image (--nv on GPUs).")
@click.option("--container-bind", "container_binds", multiple=True, metavar="SRC[:DST[:ro]]",
              help="Another host path to bind (repeatable); data, outputs, logs and the "
                   "MLflow store are bound already.")
@click.option("--container-runtime", metavar="NAME|PATH",
              help="apptainer or singularity (default: whichever is on PATH, apptainer "
                   "first).")
def launch(config_path, stage, chain, overrides, executor, profile, partition, nodes,
           gpus_per_node, tasks_per_node, cpus_per_task, mem, time, account, qos, constraint,
           sbatch_extra, log_folder, container, container_binds, container_runtime) -> None:
    """Submit a stage (the config's grid becomes one job array) or a whole chain."""
    from ..launch.commands import launch as do_launch
    from ..launch.options import build_options
    from ..launch.submit import describe
    if bool(stage) == bool(chain):
        raise click.UsageError("give exactly one of --stage or --chain")
    stages = [stage] if stage else [s.strip() for s in chain.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise click.UsageError(f"unknown stage(s) in --chain: {', '.join(bad)}")
    options = build_options(profile, executor=executor, partition=partition, nodes=nodes,
                            gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node,
                            cpus_per_task=cpus_per_task, mem=mem, time=time, account=account,
                            qos=qos, constraint=constraint, extra=_extra(sbatch_extra),
                            container=container, container_binds=list(container_binds),
                            container_runtime=container_runtime)
    record = do_launch(config_path, stages, options, overrides, log_folder)
    click.echo(describe(record))
    if options.container:
        click.echo(f"container: every task runs in {options.container}")


@click.command()
@click.argument("record", type=click.Path(), default=".")
def status(record) -> None:
    """States of a launch's jobs. RECORD: a launch record or an experiment output_dir."""
    from ..launch.record import LaunchRecord, job_states
    rows = job_states(LaunchRecord.load(record))
    for row in rows:
        cell = "" if row["cell"] in ("default", row["stage"]) else f" [{row['cell']}]"
        click.echo(f"{row['stage']}{cell}\tjob {row['job_id']}\t{row['state']}")


@click.command()
@click.argument("record", type=click.Path(), default=".")
@click.option("--stage", type=click.Choice(STAGES), help="Only this stage's jobs.")
def cancel(record, stage) -> None:
    """Cancel a launch's jobs. RECORD: a launch record or an experiment output_dir."""
    from ..launch.record import LaunchRecord, cancel_jobs
    ids = cancel_jobs(LaunchRecord.load(record), stage)
    click.echo(f"cancelled: {', '.join(ids) or 'nothing'}")
