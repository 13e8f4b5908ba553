"""``hpt-hpc train``/``probe``/``finetune``/``config``: run stages in this process,
evaluate a checkpoint (linear probe, semi-supervised fine-tune), show a resolved config or
its plan. (The SLURM launcher submits the same plans.)"""
from __future__ import annotations

import click

from ..config.protocols import FINETUNE, LINEAR, PROTOCOLS
from ..config.schema import STAGE_NAMES
from .scheduler import HERE, pop_scheduler, scheduler_options, submitted

_config = click.option("--config", "config_path", required=True,
                       type=click.Path(dir_okay=False), help="Experiment YAML file.")
_overrides = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set optim.lr=0.01 (repeatable).")
STAGES = list(STAGE_NAMES)


@click.command()
@_config
@_overrides
@click.option("--stage", "stages", multiple=True, type=click.Choice(STAGES),
              help="Stage(s) to run, in order (default: every stage in the config).")
@click.option("--init", default=None, help="Initial checkpoint, overriding the stage's init.")
def train(config_path: str, overrides, stages, init) -> None:
    """Run MoCo-v2 stages in this process (local single-GPU/CPU debug mode).

    Tracked in MLflow (``tracking`` config section): one pipeline run, a nested run per stage.
    """
    from ..launch.commands import train as run_train
    from ..plan.record import StageRecord
    if init is not None and len(stages) != 1:
        raise click.UsageError("--init needs exactly one --stage")
    record = run_train(config_path, stages, overrides, init)
    for entry in record.jobs:
        res = StageRecord.from_json(record.live[entry.job_id].result())
        click.echo(f"{res.stage}: {res.steps}/{res.total_steps} steps, loss "
                   f"{res.final_loss:.4f}, skipped images {res.skipped_images}, "
                   f"checkpoint {res.checkpoint}"
                   + (f", registered as {res.model_uri}" if res.model_uri else ""))


_checkpoint = click.option(
    "--checkpoint", default=None,
    help="Checkpoint to evaluate: a file, stage:<name> (that stage's final checkpoint), "
         "models:/<name>@<alias>, runs:/<id>/<path> or public weights from the model "
         "cache (timm:<model>.<tag>, torchvision:<Enum>.<NAME>, hf-hub:<org>/<name>; "
         "omit: random init).")
_dataset = click.option("--dataset", required=True,
                        help="Dataset name from the config's datasets.")


def _evaluate(config_path, overrides, protocol, dataset, checkpoint, changes, scheduler):
    """Run the evaluation here (debug, the default: ``(record, trials)``) or as a job on
    another executor (``(record, None)``; ``(None, None)`` once submitted to a scheduler
    that runs it later, its launch printed); ``changes`` set keys of the protocol's config
    section."""
    import dataclasses

    from ..config import load_config
    from ..eval.execute import cli_plan, run_eval_plan
    from ..eval.record import EvalRecord
    options, log_folder = pop_scheduler(scheduler, default_executor="debug")
    cfg = load_config(config_path, overrides)
    changes = {k: v for k, v in changes.items() if v is not None}
    section = PROTOCOLS[protocol].section
    cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                    **changes)})
    plan = cli_plan(cfg, protocol, dataset, checkpoint)
    result = submitted(plan, options, config_path, log_folder)
    if result is HERE:
        return run_eval_plan(plan)
    return (EvalRecord.from_json(result) if result is not None else None), None


def _protocol_options(protocol: str):
    """The protocol's CLI options, from the protocol table (mode choices included)."""
    entry = PROTOCOLS[protocol]
    kinds = {"count": click.IntRange(min=1), "int": int,
             "mode": click.Choice(list(entry.mode_names))}

    def decorate(command):
        for opt in reversed(entry.options):
            text = opt.help
            if opt.kind == "mode":
                text = "; ".join([f"{m.name}: {m.help}" for m in entry.modes] + [text])
            command = click.option(opt.flag, opt.key, type=kinds[opt.kind], default=None,
                                   help=text)(command)
        return command
    return decorate


def _changes(protocol: str, given: dict) -> dict:
    return {opt.key: given.pop(opt.key) for opt in PROTOCOLS[protocol].options}


@click.command()
@_config
@_overrides
@_checkpoint
@_dataset
@_protocol_options(LINEAR)
@scheduler_options
def probe(config_path: str, overrides, checkpoint, dataset, **options) -> None:
    """Linear probe of a checkpoint's frozen backbone (test score at the best val score),
    or a kNN vote on its features (--mode knn: nothing trained). In this process unless
    --executor (or --profile) says otherwise."""
    changes = _changes(LINEAR, options)
    record, trials = _evaluate(config_path, overrides, LINEAR, dataset, checkpoint,
                               changes, options)
    if record is None:
        return
    for trial in trials if record.trained and trials is not None else ():
        click.echo(f"seed {trial.seed}: test {trial.metric} at best val "
                   f"{100 * trial.score:.2f}% (val {100 * trial.val_score:.2f}% at "
                   f"probe step {trial.best_step})")
    click.echo(f"{dataset}: {record.describe()}")


@click.command()
@_config
@_overrides
@_checkpoint
@_dataset
@_protocol_options(FINETUNE)
@scheduler_options
def finetune(config_path: str, overrides, checkpoint, dataset, **options) -> None:
    """Semi-supervised transfer: fine-tune the whole network on a label budget. In this
    process unless --executor (or --profile) says otherwise."""
    changes = _changes(FINETUNE, options)
    record, trials = _evaluate(config_path, overrides, FINETUNE, dataset, checkpoint,
                               changes, options)
    if record is None or trials is None:  # a job's record: its one line
        if record is not None:
            click.echo(f"{dataset}: {record.describe()}")
        return
    trial = trials[0]
    click.echo(f"{dataset}: test {trial.metric} at best val {100 * trial.score:.2f}% "
               f"(val {100 * trial.val_score:.2f}% at step {trial.best_step}; "
               f"{trial.labels} labels; mode: {trial.mode})")


@click.group("config")
def config_group() -> None:
    """Inspect experiment configs."""


@config_group.command("show")
@_config
@_overrides
@click.option("--plan", "show_plan", is_flag=True,
              help="Print what would run: the phases and every stage's resolved settings.")
@click.option("--stage", "stages", multiple=True, type=click.Choice(STAGES),
              help="With --plan: these stages, in order (default: every stage).")
@click.option("--chain", is_flag=True,
              help="With --plan: plan as `launch --chain` does (each later stage starts "
                   "from the previous one).")
@click.option("--world-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --plan: DDP ranks the global batch is split over.")
def show(config_path: str, overrides, show_plan, stages, chain, world_size) -> None:
    """Validate a config and print it resolved, with every default filled in."""
    import yaml

    from ..config import config_to_dict, load_config, read_config_dict
    from ..plan import describe_phases, plan_config
    if show_plan:
        planned = plan_config(read_config_dict(config_path), overrides, stages or None,
                              world_size=world_size, handover=chain, where=config_path)
        click.echo(describe_phases(planned.phases))
        return
    click.echo(yaml.safe_dump(config_to_dict(load_config(config_path, overrides)),
                              sort_keys=False))


@config_group.command("reference")
def reference() -> None:
    """Print the reference of every config key (type, default, range, meaning) as
    Markdown: docs/config.md is this output."""
    from ..config.reference import HEADER, INTRO, sections
    from ..experiments.tables import markdown_table
    lines = ["# Config keys", "", INTRO, ""]
    for title, meaning, rows in sections():
        lines += [f"## {title}", "", meaning, ""] + markdown_table(HEADER, rows) + [""]
    click.echo("\n".join(lines).rstrip("\n"))
