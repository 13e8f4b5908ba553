"""One shape for what a finished stage reports (:class:`StageRecord`): the stage's
``result.json``, the job's summary and what ``hpt-hpc train`` prints are the same record,
and a ``result.json`` written before the record existed still reads."""
import json
import math
from pathlib import Path

from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout
from hpt_hpc.plan import StageRecord
from tiny import write_tiny_config

# The keys of a result.json as main wrote it before StageRecord (stage.py's write_result:
# the engine's StageResult without init_report, plus init_layout).
OLD_KEYS = ("stage", "variant", "checkpoint", "steps", "total_steps", "final_loss",
            "skipped_images", "resumed_from", "resume_changes", "init", "seconds", "run_id",
            "model_uri", "param_digest", "step_seconds", "queue_size", "images", "saved_step",
            "threads", "ssl", "init_layout")


def _invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_train_prints_and_writes_one_record(tmp_path, mnist_tree):
    """``hpt-hpc train`` prints the job's summary read as a StageRecord; result.json is the
    same record (the old job summary had other keys: ``init`` was the layout there and a
    dict in result.json)."""
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"base": {"dataset": "mnist", "iterations": 3}})
    from hpt_hpc.launch.commands import train
    record = train(str(config), ["base"], [], None)
    [entry] = record.jobs
    summary = StageRecord.from_json(record.live[entry.job_id].result())
    written = StageRecord.read(StageLayout(tmp_path / "out", "base"))
    assert written is not None and summary.to_json().keys() == written.to_json().keys()
    same = {k: v for k, v in summary.to_json().items() if k not in ("final_loss",
                                                                    "step_seconds")}
    assert same == {k: v for k, v in written.to_json().items() if k in same}
    assert summary.variant == "full" and summary.label == "base" and summary.completed
    assert summary.checkpoint == tmp_path / "out" / "base" / "checkpoints" / "final.pt"
    assert math.isclose(summary.final_loss, written.final_loss)

    out = _invoke("train", "--config", config, "--set", f"output_dir={tmp_path / 'cli'}")
    printed = StageRecord.read(StageLayout(tmp_path / "cli", "base"))
    assert printed.steps == 3 and printed.param_digest == summary.param_digest
    assert out.strip().endswith(f"base: 3/3 steps, loss {printed.final_loss:.4f}, skipped "
                                f"images 0, checkpoint {printed.checkpoint}")


def test_an_old_result_json_still_reads(tmp_path, mnist_tree):
    """A stage whose result.json has main's old keys only: an evaluation of it still takes
    the pretraining time, queue and image count from it."""
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    _invoke("train", "--config", config)
    layout = StageLayout(tmp_path / "out", "target")
    data = json.loads(layout.result.read_text())
    old = {k: data[k] for k in OLD_KEYS}
    old["seconds"], old["queue_size"], old["images"] = 123.5, 48, 77  # values to find again
    layout.result.write_text(json.dumps(old, indent=1))
    read = StageRecord.read(layout)
    expected = {**StageRecord("", "", Path(), 0, 0).to_json(), **old}  # new keys: defaults
    assert json.dumps(read.to_json(), sort_keys=True) == json.dumps(expected, sort_keys=True)
    _invoke("probe", "--config", config, "--dataset", "mnist", "--checkpoint", "stage:target",
            "--mode", "knn", "--set", "probe.knn_k=5")
    [result] = (tmp_path / "out" / "evaluations").glob("*.json")
    evaluation = json.loads(result.read_text())
    assert (evaluation["pretrain_seconds"], evaluation["queue_size"],
            evaluation["pretrain_images"]) == (123.5, 48, 77)
    assert evaluation["ssl"] == data["ssl"] == "moco-v2"
