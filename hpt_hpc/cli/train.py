"""``hpt-hpc train``/``probe``/``finetune``/``config``: run a stage in this process,
evaluate a checkpoint (linear probe, semi-supervised fine-tune), show a resolved config.
(The SLURM launcher wraps the same library calls.)"""
from __future__ import annotations

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


_checkpoint = click.option(
    "--checkpoint", default=None,
    help="Checkpoint to evaluate: a file, models:/<name>@<alias> or runs:/<id>/<path> "
         "(omit: random init).")
_dataset = click.option("--dataset", required=True,
                        help="Dataset name from the config's datasets.")


def _tracking_metric(metric: str) -> str:
    return "acc" if metric == "top1" else metric


@click.command()
@_config
@_overrides
@_checkpoint
@_dataset
@click.option("--mode", type=click.Choice(["cached", "augmented"]), default=None,
              help="cached: features once, no augmentation; augmented: the paper's "
                   "random-resized-crop + flip every step (default: probe.mode).")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Independent probes (seeds seed..seed+N-1), reported as mean +- std "
                   "(default: probe.repeats).")
def probe(config_path: str, overrides, checkpoint, dataset, mode, repeats) -> None:
    """Linear probe of a checkpoint's frozen backbone (test score at the best val score)."""
    import dataclasses

    from ..config import load_config
    from ..eval.runner import evaluate_linear
    from ..tracking import log_evaluation
    from ..train.state import resolve_device
    cfg = load_config(config_path, overrides)
    changes = {k: v for k, v in (("mode", mode), ("repeats", repeats)) if v is not None}
    cfg = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, **changes))
    summary = evaluate_linear(cfg, dataset, checkpoint, resolve_device(cfg.device))
    log_evaluation(cfg, None, f"probe {dataset}", summary, method="probe", dataset=dataset,
                   checkpoint=checkpoint, metric=_tracking_metric(summary.metric),
                   extra_tags={"hpt.probe_mode": summary.mode,
                               "hpt.probe_repeats": str(summary.repeats)})
    for res in summary.results:
        click.echo(f"seed {res.seed}: test {res.metric} at best val "
                   f"{100 * res.test_at_best_val:.2f}% (val {100 * res.best_val:.2f}% at "
                   f"probe step {res.best_step})")
    click.echo(f"{dataset}: {summary.describe()}")


@click.command()
@_config
@_overrides
@_checkpoint
@_dataset
@click.option("--labels", type=click.IntRange(min=1), default=None,
              help="Labelled training images, at least one per class "
                   "(default: finetune.labels).")
@click.option("--label-seed", type=int, default=None,
              help="Seed choosing the labelled images (default: finetune.label_seed).")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="SGD steps (default: finetune.iterations).")
def finetune(config_path: str, overrides, checkpoint, dataset, labels, label_seed,
             iterations) -> None:
    """Semi-supervised transfer: fine-tune the whole network on a label budget."""
    import dataclasses

    from ..config import load_config
    from ..eval.runner import evaluate_finetune
    from ..tracking import log_evaluation
    from ..train.state import resolve_device
    cfg = load_config(config_path, overrides)
    changes = {k: v for k, v in (("labels", labels), ("label_seed", label_seed),
                                 ("iterations", iterations)) if v is not None}
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, **changes))
    res = evaluate_finetune(cfg, dataset, checkpoint, resolve_device(cfg.device))
    log_evaluation(cfg, None, f"finetune {dataset}", res, method="finetune",
                   dataset=dataset, checkpoint=checkpoint,
                   metric=_tracking_metric(res.metric),
                   extra_tags={"hpt.finetune_labels": str(res.labels)})
    click.echo(f"{dataset}: test {res.metric} at best val {100 * res.test_at_best_val:.2f}% "
               f"(val {100 * res.best_val:.2f}% at step {res.best_step}; {res.labels} "
               f"labels; mode: {res.mode})")


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
