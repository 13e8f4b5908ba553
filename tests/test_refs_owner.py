"""References have one owner (hpt_hpc/config/refs.py, #27): ``StageConfig.init`` is an
``InitRef`` from load on and its text everywhere it is printed or stored; a stage run
names where it started under one tag (``hpt.init_source``), and a run that an older
version tagged ``hpt.init`` only still shows it; the MLflow-side URIs the tracking layer
writes are the ones InitRef reads back."""
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import InitRef, load_config
from hpt_hpc.config.refs import INIT_TAG, OLD_INIT_TAG
from hpt_hpc.tracking.registry import registered_uri, version_source
from tiny import write_tiny_config


def _invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_init_is_a_reference_from_load_on_and_text_when_shown(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"base": {"dataset": "mnist"},
                                "target": {"dataset": "mnist", "init": "stage:base"}})
    cfg = load_config(config)
    assert cfg.stages["target"].init == InitRef("stage", "base")
    assert cfg.stages["base"].init == InitRef() and cfg.stages["base"].init.is_random
    shown = yaml.safe_load(_invoke("config", "show", "--config", config))
    assert shown["stages"]["target"]["init"] == "stage:base"
    assert shown["stages"]["base"]["init"] is None
    plan = _invoke("config", "show", "--config", config, "--plan")
    assert "init stage:base" in plan and "init random" in plan


def test_one_tag_names_where_a_stage_started(tmp_path, mnist_tree):
    from mlflow import MlflowClient
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"base": {"dataset": "mnist", "iterations": 2},
                                "target": {"dataset": "mnist", "iterations": 2,
                                           "init": "stage:base"}},
                               tracking={"enabled": True, "system_metrics": False,
                                         "flush_seconds": 0.5})
    _invoke("train", "--config", config)
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              "tags.`hpt.kind` = 'stage'")
    tags = {r.data.tags["hpt.stage"]: r.data.tags for r in runs}
    assert tags["base"][INIT_TAG] == "random" and tags["target"][INIT_TAG] == "stage:base"
    assert all(OLD_INIT_TAG not in t for t in tags.values())
    # a run an older version wrote: hpt.init only
    [old] = [r for r in runs if r.data.tags["hpt.stage"] == "target"]
    client.delete_tag(old.info.run_id, INIT_TAG)
    client.set_tag(old.info.run_id, OLD_INIT_TAG, "stage:base")
    table = _invoke("runs", "--output-dir", tmp_path / "out")
    [row] = [line for line in table.splitlines() if line.lstrip("| ").startswith("target")]
    assert "stage:base" in row


def test_the_tracking_layers_uris_are_the_ones_initref_reads():
    assert InitRef.parse(registered_uri("tiny", "tiny-base")) == \
        InitRef.registered("tiny", "tiny-base")
    assert InitRef.run_parts_of(version_source("0a1b", "checkpoints/final.pt")) == \
        ("0a1b", "checkpoints/final.pt")
    assert InitRef.run_artifact("0a1b", "checkpoints/final.pt").run_parts == \
        ("0a1b", "checkpoints/final.pt")
    assert InitRef.registered("m", "a").model_parts == ("m", "a", None)
    assert InitRef.parse("models:/m/3").model_parts == ("m", None, "3")
    assert InitRef.stage_of("base").text == "stage:base"
