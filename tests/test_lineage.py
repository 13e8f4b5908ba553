"""What a stage and an evaluation say they are, through the CLI: a stage's method follows
from its variant and where it starts; an evaluation of a checkpoint on its own takes its
lineage from the checkpoint and is filed beside the stage run; a kNN vote is printed as a
kNN vote (checked against a vote computed here)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import config_to_dict, load_config
from hpt_hpc.models import load_checkpoint, save_checkpoint_atomic, stage_checkpoint
from hpt_hpc.ssl import MoCo
from tiny import tiny_config, write_tiny_config, write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HPT_MLFLOW_PARENT_RUN_ID", raising=False)


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _files(tmp_path):
    """A base and a source checkpoint of this toolkit, and a torchvision state dict."""
    cfg = tiny_config(tmp_path / "ck", {}, {})
    model = MoCo.from_config(cfg.model, cfg.moco, queue_size=8)
    files = {}
    for stage in ("base", "source"):
        files[stage] = tmp_path / f"{stage}.pt"
        save_checkpoint_atomic(stage_checkpoint(model, None, 1, 1, stage, "full", None,
                                                config_to_dict(cfg), {}, None), files[stage])
    files["foreign"] = tmp_path / "resnet.pt"
    torch.save(model.encoder_q.state_dict(), files["foreign"])
    return files


def test_a_stage_method_follows_from_variant_and_start(tmp_path, mnist_tree, monkeypatch):
    # The tutorial config as shipped: variant full from a random init trains from scratch.
    shutil.copytree(mnist_tree / "train", tmp_path / "my-images")
    (tmp_path / "configs" / "tutorial").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "tutorial" / "my-images.yaml",
                tmp_path / "configs" / "tutorial")
    monkeypatch.chdir(tmp_path)
    tutorial = ["config", "show", "--config", "configs/tutorial/my-images.yaml", "--plan"]
    assert "  target: Target (full) on mine [my-images], init random," in invoke(*tutorial)
    files = _files(tmp_path)
    for start, method in (("base", "HPT"), ("source", "B+S+T"), ("foreign", "HPT")):
        out = invoke(*tutorial, "--set", f"stages.target.init={files[start]}")
        assert f"  target: {method} (full) on mine" in out, (start, out)

    config = write_tiny_config(tmp_path, {"m": mnist_tree}, {
        "base": {"dataset": "m"}, "source": {"dataset": "m", "init": "stage:base"},
        "target": {"dataset": "m", "init": "stage:source"}})

    def methods(*sets, chain=False):
        args = ["config", "show", "--config", config, "--plan"] + (["--chain"] if chain else [])
        out = invoke(*args, *[x for s in sets for x in ("--set", s)])
        return re.findall(r"^  (\w+): (.+?) \((\S+)\) on m ", out, re.M)

    upstream = [("base", "MoCo-v2 base", "full"), ("source", "MoCo-v2 source", "full")]
    assert methods() == upstream + [("target", "B+S+T", "full")]
    assert methods(chain=True) == upstream + [("target", "B+S+T", "full")]
    assert methods("stages.target.variant=scratch", "stages.target.init=null")[2] == \
        ("target", "Target", "scratch")
    assert methods("stages.target.variant=bn-stats")[2] == ("target", "B+S", "bn-stats")
    from_base = "stages.target.init=stage:base"
    assert methods(from_base)[2] == ("target", "HPT", "full")
    assert methods(from_base, "stages.target.variant=bn-stats")[2] == \
        ("target", "Base", "bn-stats")
    assert methods(from_base, "stages.target.variant=bn")[2] == ("target", "HPT-BN", "bn")
    assert methods(from_base, "stages.target.variant=bn", "stages.target.train_head=false"
                   )[2] == ("target", "HPT-BN-frozen-head", "bn")


def test_an_evaluation_on_its_own_is_filed_beside_its_stage(tmp_path, mnist_tree):
    from mlflow import MlflowClient
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}},
                               tracking={"enabled": True, "system_metrics": False,
                                         "flush_seconds": 0.5})
    out = tmp_path / "out"
    invoke("train", "--config", config)
    final = out / "target" / "checkpoints" / "final.pt"
    # A checkpoint written before checkpoints recorded method, label and budget.
    old = load_checkpoint(str(final))
    assert (old.pop("method"), old.pop("label"), old.pop("target_steps")) == \
        ("Target", "target", 2)
    save_checkpoint_atomic(old, tmp_path / "old.pt")
    invoke("export", final, "--out", tmp_path / "tv.pt")
    knn = ["--mode", "knn", "--set", "probe.knn_k=5"]
    invoke("probe", "--config", config, "--dataset", "mnist", "--checkpoint", "stage:target",
           *knn)
    invoke("probe", "--config", config, "--dataset", "mnist", "--checkpoint",
           tmp_path / "old.pt", *knn)
    invoke("probe", "--config", config, "--dataset", "mnist", "--checkpoint",
           tmp_path / "tv.pt", *knn)
    invoke("finetune", "--config", config, "--dataset", "mnist", "--checkpoint",
           "models:/tiny@tiny-target", "--labels", "10", "--iterations", "2",
           "--set", "finetune.batch_size=10", "--set", "finetune.eval_every=2")
    invoke("embed", "--config", config, "--dataset", "mnist", "--split", "val",
           "--checkpoint", "models:/tiny@tiny-target", "--out", tmp_path / "emb" / "val")

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    [pipeline] = [r for r in runs if r.data.tags["hpt.kind"] == "pipeline"]
    [stage] = [r for r in runs if r.data.tags["hpt.kind"] == "stage"]
    assert stage.data.tags["hpt.method"] == "Target"  # full from random init
    version = client.get_model_version_by_alias("tiny", "tiny-target")
    assert version.tags["hpt.method"] == "Target"
    lineage = ("hpt.method", "hpt.stage", "hpt.evaluates", "hpt.target_steps",
               "hpt.pipeline")
    mine = [r for r in runs if r.data.tags["hpt.kind"] in ("eval", "embed")]
    nested = sorted((r.info.run_name, r.data.tags["hpt.checkpoint"]) for r in mine
                    if r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id)
    assert nested == sorted([("probe mnist of target", "stage:target"),
                             ("probe mnist of target", str(tmp_path / "old.pt")),
                             ("finetune mnist of target", "models:/tiny@tiny-target"),
                             ("embed mnist/val of target", "models:/tiny@tiny-target")])
    for run in mine:
        tags = run.data.tags
        if tags["hpt.checkpoint"] == str(tmp_path / "tv.pt"):  # another toolkit's file
            assert "mlflow.parentRunId" not in tags and run.info.run_name == "probe mnist"
            assert [tags[t] for t in lineage[:4]] == ["external (torchvision)", "none",
                                                      "none", "0"]
        else:
            assert [tags[t] for t in lineage] == ["Target", "target", "target", "2", "tiny"]
    table = invoke("runs", "--output-dir", out)
    assert "embed mnist/val of target" in table and "finetune mnist of target" in table
    assert len(re.findall(r"^probe mnist of target +eval: kNN \(k=5\) +Target +mnist +2 ",
                          table, re.M)) == 2, table


def _vote(train, queries, k, temperature, classes):
    """The weighted kNN vote, written out in NumPy."""
    bank = train.x.numpy() / np.linalg.norm(train.x.numpy(), axis=1, keepdims=True)
    q = queries.x.numpy() / np.linalg.norm(queries.x.numpy(), axis=1, keepdims=True)
    sims = q @ bank.T
    top = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((len(q), classes))
    for i, row in enumerate(top):
        for j in row:
            votes[i, int(train.y[j])] += np.exp(sims[i, j] / temperature)
    return (votes.argmax(1) == queries.y.numpy()).mean()


def test_knn_is_printed_as_a_vote(tmp_path, mnist_tree):
    from hpt_hpc.eval.runner import seeded_backbone, split_features
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    out = invoke("probe", "--config", config, "--dataset", "mnist", "--mode", "knn",
                 "--repeats", "3", "--set", "probe.knn_k=5")
    cfg = load_config(str(config))
    feats = split_features(cfg, "mnist", seeded_backbone(cfg, None), torch.device("cpu"))
    test, val = (_vote(feats["train"], feats[s], 5, 0.07, 10) for s in ("test", "val"))
    assert out.splitlines()[-1] == \
        f"mnist: kNN (k=5) test top1 {100 * test:.2f} %, val {100 * val:.2f} %"
    assert "probe step" not in out and "probe" not in out.splitlines()[-1]
    record = json.loads(next((tmp_path / "out" / "evaluations").glob("*.json")).read_text())
    assert (record["mode"], record["repeats"]) == ("knn (k=5)", 1)
    capped = invoke("probe", "--config", config, "--dataset", "mnist", "--mode", "knn",
                    "--set", "probe.knn_k=100000")
    assert f"kNN (k={len(feats['train'].y)}) test" in capped  # every training image voted


def test_the_report_shows_a_knn_vote_without_a_spread(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["Target"], "dataset": ["mnist"], "steps": [2],
              "probe_mode": ["knn", "cached"]}}, references=False,
        set=["probe.knn_k=5", "probe.repeats=1"])
    invoke("sweep", path, "--executor", "debug")
    invoke("report", path, "--from-files")
    report = (tmp_path / "out" / "report" / "tiny-sweep.md").read_text()
    results = {r["mode"]: r for r in (json.loads(p.read_text()) for p in
                                      (tmp_path / "out").glob("units/*/results/*.json"))}
    knn, cached = (100 * results[m]["score"] for m in ("knn (k=5)", "cached"))
    assert "### mnist: protocol check (kNN (k=5) vs cached)" in report
    assert f"| Target | 2 | {knn:.1f} (n=1) | {cached:.1f} (n=1) |" in report, report
    assert "knn (k=5)" in report.split("Evaluation modes in this report: ")[1].split("\n")[0]
