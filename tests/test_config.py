"""Config loading: strict keys with suggestions, types, overrides, cross-field checks."""
from pathlib import Path

import pytest
import yaml

from hpt_hpc.config import ConfigError, config_from_dict, flatten, load_config, stage_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "experiments")
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))


def _minimal(**extra):
    data = {"datasets": {"t": {"path": "x"}},
            "stages": {"target": {"dataset": "t", "variant": "full"}}}
    data.update(extra)
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.stages, f"{path} defines no stage"
    assert cfg.model.in_channels == cfg.data.channels


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_load_and_expand(path):
    from hpt_hpc.plan.experiment import load_experiment
    from hpt_hpc.plan.units import expand
    spec = load_experiment(str(path))
    expansion = expand(spec)
    assert expansion.pretrain and expansion.evals
    assert {"ref-raw-pixels-mnist-linear", "ref-random-init-mnist-seed0-linear"} <= \
        {u.unit_id for u in expansion.evals}


def test_paper_configs_carry_published_settings():
    cfg = load_config(ROOT / "configs/paper/hpt.yaml")
    assert (cfg.model.arch, cfg.moco.queue_size, cfg.moco.momentum, cfg.moco.temperature) == \
        ("resnet50", 65536, 0.999, 0.2)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.batch_size) == (0.03, 1e-4, 256)
    assert (cfg.probe.lr, cfg.probe.iterations, cfg.probe.milestones) == (30.0, 5000,
                                                                          [1651, 3333])
    assert cfg.augment.grayscale.p == 0.2 and cfg.augment.blur.sigma == [0.1, 2.0]
    bn = load_config(ROOT / "configs/paper/hpt-bn.yaml")
    assert bn.stages["target"].variant == "bn" and bn.stages["target"].lr == 0.1


def test_unknown_key_names_key_and_nearest():
    with pytest.raises(ConfigError) as err:
        config_from_dict(_minimal(optim={"weight_decy": 0.1}))
    msg = str(err.value)
    assert "optim.weight_decy" in msg and "did you mean 'weight_decay'" in msg


def test_unknown_top_level_and_nested_stage_key():
    with pytest.raises(ConfigError, match="did you mean 'augment'"):
        config_from_dict(_minimal(augmnt={}))
    with pytest.raises(ConfigError, match="stages.target.itertions.*did you mean 'iterations'"):
        config_from_dict(_minimal(), ["stages.target.itertions=5"])


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        config_from_dict(_minimal(optim={"lr": "fast"}))
    with pytest.raises(ConfigError, match="augment.flip.enabled: expected true/false"):
        config_from_dict(_minimal(augment={"flip": {"enabled": "yes"}}))


def test_overrides_apply_and_parse_yaml_values():
    cfg = config_from_dict(_minimal(), ["optim.lr=0.01", "augment.blur.enabled=false",
                                       "augment.crop.scale=[0.5, 1.0]",
                                       "stages.target.iterations=7"])
    assert cfg.optim.lr == 0.01
    assert cfg.augment.blur.enabled is False
    assert cfg.augment.crop.scale == [0.5, 1.0]
    assert stage_settings(cfg, "target")["iterations"] == 7
    assert stage_settings(cfg, "target")["batch_size"] == cfg.optim.batch_size
    with pytest.raises(ConfigError, match="key.path=value"):
        config_from_dict(_minimal(), ["optim.lr"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="not defined under datasets"):
        config_from_dict(_minimal(), ["stages.target.dataset=nope"])
    with pytest.raises(ConfigError, match="needs an init"):
        config_from_dict(_minimal(), ["stages.target.variant=bn"])
    with pytest.raises(ConfigError, match="names no other stage"):
        config_from_dict(_minimal(), ["stages.target.init=stage:base"])
    with pytest.raises(ConfigError, match="model.in_channels"):
        config_from_dict(_minimal(model={"in_channels": 1}))
    with pytest.raises(ConfigError, match="stage names are"):
        config_from_dict({"datasets": {"t": {"path": "x"}},
                          "stages": {"tagret": {"dataset": "t"}}})


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_minimal(name="x")))
    assert load_config(good, ["seed=3"]).seed == 3


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_global_batch_splits_over_ranks_and_lr_scales_linearly():
    cfg = config_from_dict(_minimal(optim={"lr": 0.03, "batch_size": 256,
                                           "lr_batch_reference": 256}))
    s = stage_settings(cfg, "target", world_size=8)
    assert (s["batch_size"], s["rank_batch_size"], s["lr"]) == (256, 32, 0.03)
    bigger = config_from_dict(_minimal(optim={"lr": 0.03, "batch_size": 1024,
                                              "lr_batch_reference": 256}))
    assert stage_settings(bigger, "target", world_size=4)["lr"] == pytest.approx(0.12)
    with pytest.raises(ConfigError, match="does not split evenly over 3 ranks"):
        stage_settings(cfg, "target", world_size=3)


def test_init_references_have_one_parser(tmp_path):
    from hpt_hpc.config import InitRef, InitRefError, StageLayout
    assert InitRef.parse(None).is_random and InitRef.parse("").is_random
    assert InitRef.parse("stage:base") == InitRef("stage", "base")
    assert InitRef.parse("models:/m@a").in_registry and InitRef.parse("runs:/ab12/x.pt").kind == "run"
    assert InitRef.parse("ckpt.pt").absolute().value == str(Path.cwd() / "ckpt.pt")
    for bad, message in (("models:/m", "models:/<name>@<alias>"), ("runs:/xyz", "runs:/<run_id>"),
                         ("s3://bucket/ckpt.pt", "not a supported reference"),
                         ("stage:tagret", "names no stage")):
        with pytest.raises(InitRefError, match=message):
            InitRef.parse(bad)
    from hpt_hpc.models.resolve import resolve
    layout = StageLayout(tmp_path, "target")
    assert InitRef.parse("stage:base").local_path(layout) == tmp_path / "base/checkpoints/final.pt"
    with pytest.raises(InitRefError, match="run stage 'base' first"):
        resolve(InitRef.parse("stage:base"), layout, None, who="stage 'target'")
    with pytest.raises(InitRefError, match="neither in this --chain nor finished"):
        InitRef.parse("stage:base").check(layout, (), who="stage 'target'")
    InitRef.parse("stage:base").check(layout, ("base",))  # runs first in the chain: fine
    with pytest.raises(InitRefError, match="needs MLflow tracking"):
        resolve(InitRef.parse("models:/m@a"), layout, None)
    assert InitRef.parse(str(tmp_path / "x.pt")).host_paths() == [tmp_path / "x.pt"]
    assert InitRef.parse("stage:base").tags() == {"hpt.init_source": "stage:base"}


def test_the_launch_grid_is_called_grid():
    with pytest.raises(ConfigError, match="'sweep' is now 'grid'"):
        config_from_dict(_minimal(sweep={"seed": [0, 1]}))
    assert config_from_dict(_minimal(grid={"seed": [0, 1]})).grid == {"seed": [0, 1]}
