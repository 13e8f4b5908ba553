"""``hpt-hpc quickstart``: the offline main job."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", "--output", "output", default="outputs/quickstart", show_default=True,
              type=click.Path(file_okay=False), help="Where runs, tables and plots go.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the offline datasets are prepared.")
@click.option("--budgets", default=None,
              help="Target pretraining steps per method, comma separated (default: the "
                   "experiment file's steps).")
@click.option("--base-steps", type=click.IntRange(min=1), default=None,
              help="Override the base stage length (default: the experiment file's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set optim.lr=0.03 (repeatable).")
def quickstart(output: str, data_dir: str, budgets: str, base_steps, overrides) -> None:
    """Base (Fashion-MNIST) -> HPT target (MNIST) vs Base, Target and HPT-BN, probed.

    Needs no GPU, SLURM or network; writes results.md, results.csv and a PNG plot.
    """
    from ..errors import HptError
    from ..experiments.quickstart import run_quickstart
    steps = [b.strip() for b in budgets.split(",") if b.strip()] if budgets else []
    if budgets is not None and not (steps and all(b.isdigit() and int(b) > 0 for b in steps)):
        raise HptError(f"--budgets {budgets!r}: give positive step counts separated by "
                       "commas, e.g. --budgets 25,100,400")
    outcome = run_quickstart(output, data_dir, [int(b) for b in steps] or None, base_steps,
                             overrides)
    click.echo(outcome.table.read_text())
    click.echo(f"results: {outcome.table}, {outcome.csv}, {outcome.plot} "
               f"({outcome.seconds / 60:.1f} min)")
