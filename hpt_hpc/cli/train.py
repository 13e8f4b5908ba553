"""``hpt-hpc train``/``probe``/``config``: run a stage in this process, probe a checkpoint,
show a resolved config. (The SLURM launcher wraps the same library calls.)"""
from __future__ import annotations

from pathlib import Path

import click

_config = click.option("--config", "config_path", required=True,
                       type=click.Path(dir_okay=False), help="Experiment YAML file.")
_overrides = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set optim.lr=0.01 (repeatable).")


@click.command()
@_config
@_overrides
@click.option("--stage", "stages", multiple=True,
              type=click.Choice(["base", "source", "target"]),
              help="Stage(s) to run, in order (default: every stage in the config).")
@click.option("--init", default=None, help="Initial checkpoint, overriding the stage's init.")
def train(config_path: str, overrides, stages, init) -> None:
    """Run MoCo-v2 stages in this process (local single-GPU/CPU debug mode).

    Tracked in MLflow (``tracking`` config section): one pipeline run, a nested run per stage.
    """
    from ..config import load_config
    from ..tracking import end_pipeline_run, start_pipeline_run
    from ..train.pipeline import run_chain, run_configured_stage
    cfg = load_config(config_path, overrides)
    if init is not None and len(stages) != 1:
        raise click.UsageError("--init needs exactly one --stage")
    parent = start_pipeline_run(cfg, cfg.name)
    status = "FAILED"
    try:
        if init is not None:
            results = {stages[0]: run_configured_stage(cfg, stages[0], init=init,
                                                       parent_run_id=parent)}
        else:
            results = run_chain(cfg, stages or None, parent_run_id=parent)
        status = "FINISHED" if all(r.completed for r in results.values()) else "KILLED"
    finally:
        end_pipeline_run(cfg, parent, status)
    for name, res in results.items():
        click.echo(f"{name}: {res.steps}/{res.total_steps} steps, loss {res.final_loss:.4f}, "
                   f"skipped images {res.skipped_images}, checkpoint {res.checkpoint}"
                   + (f", registered as {res.model_uri}" if res.model_uri else ""))


@click.command()
@_config
@_overrides
@click.option("--checkpoint", default=None,
              help="Checkpoint to probe: a file, models:/<name>@<alias> or runs:/<id>/<path> "
                   "(omit: random init).")
@click.option("--dataset", required=True, help="Dataset name from the config's datasets.")
def probe(config_path: str, overrides, checkpoint, dataset) -> None:
    """Linear probe of a checkpoint's frozen backbone (cached-features mode)."""
    from ..config import load_config
    from ..eval.runner import probe_checkpoint
    from ..train.state import resolve_device
    from ..tracking import log_evaluation
    cfg = load_config(config_path, overrides)
    path = checkpoint
    if checkpoint and checkpoint.startswith(("models:/", "runs:/")):
        from ..tracking.lineage import fetch_init
        from ..tracking.store import resolve_tracking_uri
        path, _ = fetch_init(checkpoint, resolve_tracking_uri(cfg),
                             Path(cfg.output_dir) / "init-cache")
    res = probe_checkpoint(cfg, dataset, path, resolve_device(cfg.device), cfg.seed)
    log_evaluation(cfg, None, f"probe {dataset}", res, method="probe", dataset=dataset,
                   checkpoint=checkpoint)
    click.echo(f"test accuracy at best val: {100 * res.test_at_best_val:.2f}% "
               f"(val {100 * res.best_val:.2f}% at probe step {res.best_step}; {res.mode})")


@click.group("config")
def config_group() -> None:
    """Inspect experiment configs."""


@config_group.command("show")
@_config
@_overrides
def show(config_path: str, overrides) -> None:
    """Validate a config and print it resolved, with every default filled in."""
    import yaml

    from ..config import config_to_dict, load_config
    click.echo(yaml.safe_dump(config_to_dict(load_config(config_path, overrides)),
                              sort_keys=False))
