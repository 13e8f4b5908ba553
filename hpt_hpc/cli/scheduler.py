"""The scheduler options shared by every command that submits work (``launch``,
``sweep``, and ``probe``/``finetune``/``embed``): one decorator, one way to turn them into
:class:`~hpt_hpc.launch.options.SchedulerOptions` (a profile, then the flags given)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import click

from ..launch.executors import EXECUTORS as TABLE  # light: no torch, no submitit

EXECUTORS = ["auto", *TABLE]
# keyword names the decorator adds, in the order of --help
NAMES = ("executor", "profile", "partition", "nodes", "gpus_per_node", "tasks_per_node",
         "cpus_per_task", "mem", "time", "account", "qos", "constraint", "sbatch_extra",
         "max_num_timeout", "log_folder", "container", "container_binds",
         "container_runtime")

_OPTIONS = [
    click.option("--executor", type=click.Choice(EXECUTORS), default=None,
                 help="auto: slurm when sbatch is on PATH, else local; debug runs everything "
                      "in this process (default: the profile's, else auto)."),
    click.option("--profile", help="Cluster profile: slurm/profiles/<name>.yaml (or "
                                   "$HPT_SLURM_PROFILES); flags override its values."),
    click.option("--partition", help="SLURM partition (default: the cluster's default)."),
    click.option("--nodes", type=click.IntRange(min=1), help="Nodes per job (default 1)."),
    click.option("--gpus-per-node", type=click.IntRange(min=0),
                 help="GPUs per node; one DDP rank per GPU (default 0: CPU)."),
    click.option("--tasks-per-node", type=click.IntRange(min=1),
                 help="DDP ranks per node on CPU nodes (default 1)."),
    click.option("--cpus-per-task", type=click.IntRange(min=1),
                 help="CPU cores per rank (default 2)."),
    click.option("--mem", help="Memory per node, e.g. 32G (default: the partition's)."),
    click.option("--time", help="Time limit per job: minutes or [D-]HH:MM[:SS] (default 60)."),
    click.option("--account", help="SLURM account to charge."),
    click.option("--qos", help="SLURM quality of service."),
    click.option("--constraint", help="SLURM node features, e.g. a100."),
    click.option("--sbatch", "sbatch_extra", multiple=True, metavar="OPTION=VALUE",
                 help="Extra sbatch option, e.g. --sbatch exclusive= (repeatable)."),
    click.option("--max-num-timeout", type=click.IntRange(min=0),
                 help="Times a job that hits its time limit is requeued to resume (default "
                      "30; preemptions do not count)."),
    click.option("--log-folder", help="submitit folder (default <output_dir>/slurm-logs/%j)."),
    click.option("--container", metavar="IMAGE.sif",
                 help="Run every task inside this Apptainer/Singularity image (--nv on "
                      "GPUs)."),
    click.option("--container-bind", "container_binds", multiple=True,
                 metavar="SRC[:DST[:ro]]",
                 help="Another host path to bind (repeatable); data, outputs, logs and the "
                      "MLflow store are bound already."),
    click.option("--container-runtime", metavar="NAME|PATH",
                 help="apptainer or singularity (default: whichever is on PATH, apptainer "
                      "first)."),
]


def scheduler_options(command: Callable) -> Callable:
    """Add every scheduler flag to ``command`` (passed as the keywords in :data:`NAMES`)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def _extra(values) -> Dict[str, Any]:
    extra = {}
    for item in values:
        key, _, value = item.partition("=")
        extra[key.lstrip("-")] = value or None
    return extra


def pop_scheduler(kwargs: Dict[str, Any], default_executor: Optional[str] = None):
    """Remove the scheduler keywords from ``kwargs``; return ``(SchedulerOptions,
    log_folder)``. ``default_executor``: the executor when neither ``--executor`` nor
    ``--profile`` names one (else the profile's, else auto)."""
    from ..launch.options import build_options
    values = {name: kwargs.pop(name) for name in NAMES}
    if values["executor"] is None and values["profile"] is None:
        values["executor"] = default_executor
    log_folder = values.pop("log_folder")
    profile = values.pop("profile")
    values["extra"] = _extra(values.pop("sbatch_extra"))
    values["container_binds"] = list(values["container_binds"])
    return build_options(profile, **values), log_folder


HERE = object()  # submitted(): the plan runs in this process


def submitted(plan: Any, options: Any, source: str, log_folder: Optional[str]) -> Any:
    """``probe``/``finetune``/``embed``: :data:`HERE` when the executor runs jobs in this
    process (the caller runs the plan as it always did), else the plan submitted as one
    job: its result, or ``None`` when it runs later (its launch printed)."""
    from ..launch.commands import submit_one
    from ..launch.executors import resolve_executor
    from ..launch.submit import describe
    if resolve_executor(options).in_process and not options.container:
        return HERE
    record, result = submit_one(plan, options, source, log_folder)
    if result is None:
        click.echo(describe(record))
        click.echo(f"follow: hpt-hpc status {record.output_dir} --watch")
    return result
