"""``hpt-hpc quickstart``: the offline main job."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", "--output", "output", default="outputs/quickstart", show_default=True,
              type=click.Path(file_okay=False), help="Where runs, tables and plots go.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the offline datasets are prepared.")
@click.option("--budgets", default="50,200,800", show_default=True,
              help="Target pretraining steps per method, comma separated.")
@click.option("--base-steps", type=int, default=None, help="Override the base stage length.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set optim.lr=0.03 (repeatable).")
def quickstart(output: str, data_dir: str, budgets: str, base_steps, overrides) -> None:
    """Base (Fashion-MNIST) -> HPT target (MNIST) vs Base, Target and HPT-BN, probed.

    Needs no GPU, SLURM or network; writes results.md, results.csv and a PNG plot.
    """
    from ..experiments.quickstart import run_quickstart
    steps = [int(b) for b in budgets.split(",") if b.strip()]
    outcome = run_quickstart(output, data_dir, steps, base_steps, overrides)
    click.echo(outcome.table.read_text())
    click.echo(f"results: {outcome.table}, {outcome.csv}, {outcome.plot} "
               f"({outcome.seconds / 60:.1f} min)")
