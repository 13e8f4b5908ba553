"""Hostile config and experiment files, names and references through the real CLI (#24):
each gives exit code 2 and one ``error:`` line without a traceback, and writes nothing.

Which mechanism covers which issue case:

- 11 (alias bomb), 21 (duplicate keys), 25 (binary file): the one YAML reader of user files,
  :mod:`hpt_hpc.config.yamlfile` (configs, experiment files, profiles, ``--set`` values).
- 4 (``runs:/<id>/../..``): :meth:`InitRef.parse` refuses an artifact path that leaves the
  run's artifacts; :func:`hpt_hpc.tracking.registry.fetch_checkpoint` resolves the path
  and refuses one outside the run's artifact root before linking or downloading.
- 20 (``name: ../../srv/escaped``): :func:`hpt_hpc.config.layout.folder_name`, applied to
  an experiment file's name before its default output folder is derived.
- 26 (a quote in a name breaks MLflow filters): :func:`hpt_hpc.tracking.filters.run_filter`,
  the one builder of search filters, quotes every value the way MLflow's parser reads it
  (a name with both kinds of quote is refused when the config is validated).
- 26 (a launch record holding ``null`` or other wrong JSON types): ``LaunchRecord.load``
  checks every field against its declared type before ``status``/``cancel`` use it.
- 13 (the divergence advice was refused by the resume settings check): the config key
  ``checkpoint.resume_changes`` names the settings (learning rates only) allowed to differ
  from the checkpoint's; the divergence error gives the exact options to add
  (``train.resume.lower_rate_advice``), and the resume records what changed.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tiny import write_tiny_config, write_tiny_experiment
from usererror import assert_user_error, clear_tracking_env, run

STAGES = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 4}}
STUDY = {"s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    clear_tracking_env(monkeypatch)


def _config(tmp_path, mnist_tree) -> Path:
    return write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES)


LAUGHS = "\n".join(["grid:", "  a: &a [x, x, x, x, x, x, x, x, x, x]"]
                   + [f"  {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, "
                      f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                      f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
                      for i in range(5)]) + "\n"


def test_alias_bomb_is_refused_at_its_line(tmp_path, mnist_tree):  # case 11
    cfg = _config(tmp_path, mnist_tree)
    cfg.write_text(cfg.read_text() + LAUGHS)
    lines = cfg.read_text().splitlines()
    line = lines.index(LAUGHS.splitlines()[2]) + 1
    result = run("config", "show", "--config", cfg)
    error = assert_user_error(result, f"line {line}: YAML aliases ('*a') are not supported")
    assert len(result.output) < 1000 and str(cfg) in error


def test_alias_in_an_experiment_file_and_a_set_value_is_refused(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, STUDY)
    path.write_text(path.read_text() + "prepare: &p {}\nset: *p\n")
    assert_user_error(run("sweep", path, "--dry-run"), "YAML aliases ('*p')")
    cfg = _config(tmp_path, mnist_tree)
    assert_user_error(run("config", "show", "--config", cfg, "--set", "grid=[&g 1, *g]"),
                      "override 'grid=[&g 1, *g]': line 1: YAML aliases ('*g')")


def test_duplicate_keys_are_refused_at_any_depth(tmp_path, mnist_tree):  # case 21
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, STUDY)
    text = path.read_text() + "methods:\n  Base: {bn_batches: 5}\n  Base: {bn_batches: 999}\n"
    path.write_text(text)
    line = len(text.splitlines())
    assert_user_error(run("sweep", path, "--dry-run"),
                      f"line {line}: duplicate key 'Base' (first given on line {line - 1})")
    assert not (tmp_path / "out").exists()
    cfg = _config(tmp_path, mnist_tree)
    data = cfg.read_text().replace("  lr: 0.05\n", "  lr: 0.05\n  lr: 5.0\n", 1)
    cfg.write_text(data)
    assert_user_error(run("train", "--config", cfg), "duplicate key 'lr'")
    assert not (tmp_path / "out").exists()


def test_a_binary_file_is_one_line(tmp_path, mnist_tree):  # case 25
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00\x89PNG\r\n\x1a\n")
    for args in (["sweep", binary, "--dry-run"], ["train", "--config", binary],
                 ["config", "show", "--config", binary]):
        assert_user_error(run(*args), "is not UTF-8 text (byte 0xff at offset 6)")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: a\x00b\n")
    assert_user_error(run("config", "show", "--config", nul), "not valid YAML")


def test_plain_yaml_still_reads(tmp_path, mnist_tree):
    cfg = _config(tmp_path, mnist_tree)
    result = run("config", "show", "--config", cfg, "--set", "grid={a: [1, 2]}")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["grid"] == {"a": [1, 2]}


def _store_with_a_run(tmp_path) -> tuple:
    """A local sqlite store holding one run with one artifact: ``(uri, run_id)``."""
    import mlflow
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "store" / "art"))
    run = client.create_run(exp)
    weights = tmp_path / "final.pt"
    weights.write_bytes(b"not a checkpoint")
    client.log_artifact(run.info.run_id, str(weights), "checkpoints")
    return uri, run.info.run_id


@pytest.mark.parametrize("path", ["../../../../etc/hostname", "checkpoints/../../../secret",
                                  "/etc/hostname", "checkpoints//etc/hostname"])
def test_a_run_artifact_path_stays_inside_the_run(tmp_path, mnist_tree, path):  # case 4
    uri, run_id = _store_with_a_run(tmp_path)
    secret = tmp_path / "store" / "secret"
    secret.write_text("outside the run's artifacts")
    cfg = _config(tmp_path, mnist_tree)
    ref = f"runs:/{run_id}/{path}"
    result = run("probe", "--config", cfg, "--set", f"tracking.uri={uri}",
                 "--set", "tracking.enabled=true", "--checkpoint", ref, "--dataset", "mnist")
    assert_user_error(result, "must stay inside the run's artifacts")
    cache = tmp_path / "out" / "evaluations" / "init-cache"
    linked = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert linked == []


def test_a_run_artifact_that_links_outside_is_refused(tmp_path, mnist_tree):  # case 4
    uri, run_id = _store_with_a_run(tmp_path)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x")
    art = next((tmp_path / "store" / "art").rglob("checkpoints"))
    (art / "link.pt").symlink_to(outside)
    result = run("probe", "--config", _config(tmp_path, mnist_tree), "--set",
                 f"tracking.uri={uri}", "--set", "tracking.enabled=true", "--checkpoint",
                 f"runs:/{run_id}/checkpoints/link.pt", "--dataset", "mnist")
    assert_user_error(result, f"leads to {outside}")
    cache = tmp_path / "out" / "evaluations" / "init-cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


@pytest.mark.parametrize("name", ["../../../../srv/escaped", "..", "a/b", "a\\b", "", None,
                                  ["x"]])
def test_an_experiment_name_stays_inside_the_outputs(tmp_path, mnist_tree, monkeypatch,
                                                      name):  # case 20
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, STUDY, name=name,
                                 output_dir=None)
    before = sorted(tmp_path.rglob("*"))
    for args in (["sweep", path, "--dry-run"], ["report", path]):
        assert_user_error(run(*args), f"{path}: name: ")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_plain_experiment_name_gets_its_default_folder(tmp_path, mnist_tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, STUDY, name="my run..1",
                                 output_dir=None)
    result = run("sweep", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "outputs").exists() or \
        all(p.is_relative_to(tmp_path / "outputs" / "experiments" / "my run..1")
            for p in (tmp_path / "outputs").rglob("*") if p.is_file())


def test_a_quote_in_a_name_is_searched_for_correctly(tmp_path, mnist_tree):  # case 26
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES,
                            tracking={"enabled": True, "system_metrics": False})
    name = "bob's run"
    for _ in range(2):  # the second train finds the pipeline run the first one made
        result = run("train", "--config", cfg, "--set", f"name={name}")
        assert result.exit_code == 0, result.output
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "")
    pipelines = [r for r in runs if r.data.tags.get("hpt.kind") == "pipeline"]
    assert [r.data.tags["hpt.pipeline"] for r in pipelines] == [name]
    table = run("runs", "--output-dir", tmp_path / "out", "--pipeline", name)
    assert table.exit_code == 0 and "FINISHED" in table.output, table.output
    both = run("train", "--config", cfg, "--set", "name=bob's \"run\"")
    assert_user_error(both, "holds both ' and \"")


GOOD_RECORD = {"created": "20240101-000000", "executor": "local", "config": "/c.yaml",
               "stages": ["target"], "log_folder": "logs/%j", "output_dir": "out",
               "jobs": [{"stage": "target", "job_id": "123", "depends_on": [], "tasks": 1}]}


@pytest.mark.parametrize("change, message", [
    (lambda r: None, "the record is NoneType, not an object"),
    (lambda r: [r], "the record is list, not an object"),
    (lambda r: {**r, "jobs": None}, "jobs is null, not"),
    (lambda r: {**r, "jobs": [None]}, "jobs[0] is NoneType, not an object"),
    (lambda r: {**r, "log_folder": None}, "log_folder is null, not str"),
    (lambda r: {**r, "executor": 5}, "executor is 5, not str"),
    (lambda r: {**r, "stages": ["target", None]}, "stages is [\"target\", null]"),
    (lambda r: {**r, "jobs": [{**r["jobs"][0], "job_id": None}]}, "jobs[0]: job_id is null"),
    (lambda r: {**r, "jobs": [{**r["jobs"][0], "tasks": "2"}]}, "jobs[0]: tasks is \"2\""),
    (lambda r: {**r, "live": {}}, "unknown field 'live'"),
])
def test_a_damaged_launch_record_is_one_line(tmp_path, change, message):  # case 26
    import json
    record = tmp_path / "launch.json"
    good = run("status", _write(record, GOOD_RECORD))
    assert good.exit_code == 0 and "123" in good.output, good.output
    text = json.dumps(change(json.loads(json.dumps(GOOD_RECORD))))
    _write(record, text)
    for command in ("status", "cancel"):
        assert_user_error(run(command, record), f"launch record {record} is unreadable")
        assert_user_error(run(command, record), message)
    assert record.read_text() == text


def _write(path: Path, data) -> Path:
    import json
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_divergence_advice_resumes_the_stage(tmp_path, mnist_tree):  # case 13
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                            {"target": {"dataset": "mnist", "variant": "scratch",
                                        "iterations": 8}}, checkpoint={"every": 3})
    command = ["train", "--config", cfg, "--set", "optim.lr=1e5",
               "--set", "optim.schedule=constant"]
    line = assert_user_error(run(*command), "add --set optim.lr=10000 --set "
                             "checkpoint.resume_changes=[optim.lr] to the same command")
    last = tmp_path / "out" / "target" / "checkpoints" / "last.pt"
    assert last.is_file() and str(last) in line  # a good checkpoint to resume from
    advice = shlex.split(re.search(r"add (.*) to the same command", line)[1])
    # the lower rate alone is refused: the settings differ from the checkpoint's
    assert_user_error(run(*command, *advice[:2]), "was written with other settings")
    result = run(*command, *advice)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "target" / "result.json").read_text())
    assert summary["resumed_from"] == 3 and summary["steps"] == summary["total_steps"] == 8
    assert summary["resume_changes"] == ["optim.lr: 100000.0 -> 10000.0",
                                         "plan.lr: 100000.0 -> 10000.0"]
    assert_user_error(run("config", "show", "--config", cfg, "--set",
                          "checkpoint.resume_changes=[model.width]"),
                      "checkpoint.resume_changes: 'model.width' cannot differ")
