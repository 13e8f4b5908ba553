"""``hpt-hpc``: the command group. Heavy imports (torch, DALI, MLflow) happen inside
commands, so ``hpt-hpc --help`` answers quickly."""
from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from ..progress import guard_terminal
from .data import data
from .hub import models_group
from .train import config_group, finetune, probe, train
from .launch import cancel, launch, status
from .mlflow import mlflow_group, runs
from .models import embed, export
from .quickstart import quickstart
from .sweep import report, sweep


class _ErrorHandlingGroup(click.Group):
    """Turn the toolkit's errors into one clear line: exit code 1 when submitted work
    failed, 2 for input the user can fix (click's own usage errors are 2 as well)."""

    def invoke(self, ctx: click.Context):
        from ..errors import EXIT_FAILED, EXIT_USER_ERROR, USER_ERRORS, WorkFailed
        try:
            return super().invoke(ctx)
        except WorkFailed as exc:
            click.echo(f"failed: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except USER_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)


@click.group(cls=_ErrorHandlingGroup, context_settings={"show_default": True})
@click.version_option(__version__, prog_name="hpt-hpc")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Hierarchical PreTraining (staged MoCo-v2) for SLURM clusters and local machines."""
    guard_terminal()  # before logging holds the stream: nothing glues to a progress bar
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(data)
cli.add_command(train)
cli.add_command(probe)
cli.add_command(finetune)
cli.add_command(config_group)
cli.add_command(quickstart)
cli.add_command(launch)
cli.add_command(status)
cli.add_command(cancel)
cli.add_command(mlflow_group)
cli.add_command(runs)
cli.add_command(sweep)
cli.add_command(report)
cli.add_command(export)
cli.add_command(embed)
cli.add_command(models_group)

if __name__ == "__main__":  # pragma: no cover
    cli()
