"""Tiny experiment configs for tests: a width-0.125 ResNet-18 MoCo at 16x16 grey, and tiny
timm models of each family (``TIMM_FAMILIES``: the ``model`` and ``data`` sections)."""
from pathlib import Path

import yaml

from hpt_hpc.config import config_from_dict


def _grey(size: int) -> dict:
    return {"image_size": size, "channels": 1, "mean": [0.5], "std": [0.5], "workers": 0}


# A few steps of each take 0.5-3 s on one CPU core.
TIMM_FAMILIES = {
    "resnet50": {"model": {"arch": "timm:resnet50", "in_channels": 1}, "data": _grey(32)},
    "vit-s16": {"model": {"arch": "timm:vit_small_patch16_224", "in_channels": 1,
                          "timm_kwargs": {"patch_size": 4, "depth": 2}}, "data": _grey(16)},
    "convnext": {"model": {"arch": "timm:convnext_atto", "in_channels": 1}, "data": _grey(32)},
}


def tiny_config_data(out: Path, datasets: dict, stages: dict, **sections) -> dict:
    """A raw config dict (a few ms per step on CPU); ``sections`` replace whole sections."""
    data = {
        "name": "tiny", "seed": 0, "output_dir": str(out), "device": "cpu",
        "datasets": {k: {"path": str(v)} for k, v in datasets.items()},
        "model": {"arch": "resnet18", "width": 0.125, "small_stem": True, "stem_stride": 2,
                  "in_channels": 1},
        "moco": {"queue_size": 64, "momentum": 0.9, "temperature": 0.2, "dim": 16},
        "optim": {"lr": 0.05, "batch_size": 8, "iterations": 6, "weight_decay": 1e-4},
        "augment": {"flip": {"enabled": False}, "grayscale": {"enabled": False},
                    "color_jitter": {"saturation": 0.0, "hue": 0.0},
                    "blur": {"kernel_size": 3}},
        "data": {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.5], "workers": 0},
        "checkpoint": {"every": 2},
        "probe": {"lr": 0.1, "iterations": 50, "milestones": [30], "batch_size": 64,
                  "eval_every": 10},
        "stages": stages,
        # MLflow off by default (schema creation and import cost seconds per process);
        # the tracking and launch tests switch it on.
        "tracking": {"enabled": False},
    }
    data.update(sections)
    return data


def write_tiny_config(folder: Path, datasets: dict, stages: dict, **sections) -> Path:
    """Write a tiny config (output under ``folder/out``) to ``folder/config.yaml``."""
    data = tiny_config_data(Path(folder) / "out", datasets, stages, **sections)
    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_config(out: Path, datasets: dict, stages: dict, **sections):
    """The validated config of :func:`tiny_config_data`."""
    return config_from_dict(tiny_config_data(out, datasets, stages, **sections))


def write_tiny_experiment(folder: Path, datasets: dict, studies: dict, tracking: bool = False,
                          name: str = "tiny-sweep", config_sections: dict = None,
                          **extra) -> Path:
    """A tiny config plus an experiment file (``folder/experiment.yaml``) whose upstream
    base stage trains 2 steps on the first dataset; ``extra`` adds/replaces top-level keys
    of the experiment file, ``config_sections`` whole sections of the config."""
    sections = {"tracking": {"enabled": tracking, "system_metrics": False},
                "probe": {"lr": 0.1, "iterations": 20, "milestones": [10],
                          "batch_size": 64, "eval_every": 10}, **(config_sections or {})}
    write_tiny_config(folder, datasets, {}, **sections)
    data = {"name": name, "config": "config.yaml", "output_dir": str(Path(folder) / "out"),
            "upstream": {"base": {"dataset": next(iter(datasets)), "iterations": 2}},
            "studies": studies, **extra}
    path = Path(folder) / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stage_plan_of(cfg, stage: str, *, parent_run_id=None, label=None, method=None,
                  extra_tags=None, init=None, pipeline=None):
    """The plan of one stage of ``cfg`` (as ``hpt-hpc train`` makes it), tracked per the
    config, nested under ``parent_run_id`` of the pipeline ``pipeline`` (default: the
    config's name)."""
    from hpt_hpc.config import InitRef
    from hpt_hpc.plan import stage_plan, tracking_target
    return stage_plan(cfg, stage, init=InitRef.parse(init) if init else None, label=label,
                      method=method, tags=extra_tags,
                      tracking=tracking_target(cfg, pipeline, parent_run_id))


def run_stage_of(cfg, stage: str, *, stop_after=None, should_stop=None, **plan_args):
    """Run one stage of ``cfg`` in this process (what the stage job does)."""
    from hpt_hpc.train import run_plan
    plan = stage_plan_of(cfg, stage, **plan_args)
    return run_plan(plan, stop_after=stop_after, should_stop=should_stop)


def run_all_stages(cfg) -> dict:
    """Every stage of ``cfg`` in order, in this process: ``{stage: StageRecord}``."""
    from hpt_hpc.plan import plan_stages
    from hpt_hpc.train import run_plan
    return {plan.stage: run_plan(plan) for plan in plan_stages(cfg)}
