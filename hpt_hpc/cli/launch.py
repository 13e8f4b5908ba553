"""``hpt-hpc launch``/``status``/``cancel``: submit stages with submitit, follow them."""
from __future__ import annotations

import click

from ..config.schema import STAGE_NAMES
from .scheduler import pop_scheduler, scheduler_options

STAGES = list(STAGE_NAMES)


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The experiment config (YAML).")
@click.option("--stage", type=click.Choice(STAGES), help="The stage to run.")
@click.option("--chain", help="Comma-separated stages submitted at once with afterok "
                              "dependencies, e.g. base,source,target.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable), e.g. --set optim.lr=0.01.")
@scheduler_options
def launch(config_path, stage, chain, overrides, **scheduler) -> None:
    """Submit a stage (the config's grid becomes one job array) or a whole chain."""
    from ..launch.commands import launch as do_launch
    from ..launch.submit import describe
    if bool(stage) == bool(chain):
        raise click.UsageError("give exactly one of --stage or --chain")
    stages = [stage] if stage else [s.strip() for s in chain.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise click.UsageError(f"unknown stage(s) in --chain: {', '.join(bad)}")
    options, log_folder = pop_scheduler(scheduler)
    record = do_launch(config_path, stages, options, overrides, log_folder)
    click.echo(describe(record))
    if options.container:
        click.echo(f"container: every task runs in {options.container}")
    click.echo(f"follow: hpt-hpc status {record.output_dir} --watch")


def _status_line(row) -> str:
    cell = "" if row["cell"] in ("default", row["stage"]) else f" [{row['cell']}]"
    line = f"{row['stage']}{cell}\tjob {row['job_id']}\t{row['state']}"
    figures = row.get("progress")
    if figures:
        from ..progress import format_seconds
        line += f"\tstep {figures['step']}/{figures['total']} ({figures['percent']:.0f}%)"
        if row["state"].startswith("RUNNING"):  # an ETA only while it runs
            line += f", ETA {format_seconds(figures['eta_seconds'])}"
        line += f" (as of {figures['updated'][11:19]})"
    return line


@click.command()
@click.argument("record", type=click.Path(), default=".")
@click.option("--watch", is_flag=True,
              help="Refresh until no job is pending or running (Ctrl-C to stop watching).")
@click.option("--every", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds between refreshes with --watch.")
def status(record, watch, every) -> None:
    """States of a launch's jobs, with the step, percent done and ETA of running stages.
    RECORD: a launch record or an experiment output_dir."""
    import time

    from ..launch.record import LaunchRecord, is_active, job_states
    launch = LaunchRecord.load(record)
    while True:
        rows = job_states(launch)
        if watch:
            click.echo(time.strftime("-- %H:%M:%S"))
        for row in rows:
            click.echo(_status_line(row))
        if not watch or not any(is_active(row["state"]) for row in rows):
            return
        time.sleep(every)


@click.command()
@click.argument("record", type=click.Path(), default=".")
@click.option("--stage", type=click.Choice(STAGES), help="Only this stage's jobs.")
def cancel(record, stage) -> None:
    """Cancel a launch's jobs. RECORD: a launch record or an experiment output_dir."""
    from ..launch.record import LaunchRecord, cancel_jobs
    ids = cancel_jobs(LaunchRecord.load(record), stage)
    click.echo(f"cancelled: {', '.join(ids) or 'nothing'}")
