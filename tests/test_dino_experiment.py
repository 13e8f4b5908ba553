"""The DINO comparison (#25): an experiment file whose stages train with DINO, units that
never share a checkpoint or a result with MoCo-v2 units, a report naming the method, and
the paper config continuing a public DINOv2 ViT-S/14."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.eval.record import EvalRecord
from hpt_hpc.experiments.report import build_report
from hpt_hpc.plan.experiment import load_experiment
from hpt_hpc.plan.unit_plans import registry_init
from hpt_hpc.plan.units import expand
from hpt_hpc.plan.plans import TrackingTarget
from tiny import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
DINO_FILE = REPO / "configs" / "experiments" / "dino.yaml"
PAPER = REPO / "configs" / "paper" / "dino-continue.yaml"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def outside_the_checkout(tmp_path: Path) -> Path:
    """The experiment file with its paths made absolute and its outputs under tmp_path, so
    a run of it in this checkout (finished units) does not change what the test sees."""
    data = yaml.safe_load(DINO_FILE.read_text())
    here = DINO_FILE.parent
    data["config"] = str((here / data["config"]).resolve())
    for entry in data["datasets"].values():
        entry["path"] = str((here / entry["path"]).resolve())
    data["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "dino.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_dino_experiment_plans_the_intended_grid(tmp_path):
    spec = load_experiment(str(DINO_FILE))
    cfg = spec.base_config()
    assert (cfg.ssl, cfg.optim.optimizer, cfg.optim.clip_grad) == ("dino", "adamw", 3.0)
    assert cfg.augment.local_crops.number == 4 and cfg.dino.momentum_teacher == 0.996
    assert (cfg.model.arch, cfg.model.width, cfg.data.image_size) == ("resnet18", 0.25, 32)
    units = expand(spec)
    cells = {(u.method, u.steps, u.seed) for u in units.pretrain}
    expected = {(m, s, seed) for m in ("Target", "HPT", "HPT-BN") for s in (50, 200)
                for seed in (0, 1, 2)} | {("Base", 0, seed) for seed in (0, 1, 2)}
    assert cells == expected  # the method table's names, equal budgets, 3 seeds
    assert all(u.unit_id.endswith("-dino") for u in units.pretrain)
    trained = [e for e in units.evals if e.pretrain]
    assert sorted({e.probe_mode for e in trained}) == ["cached", "knn"]
    assert len(trained) == 2 * len(units.pretrain)
    assert units.upstream == ["base"]
    out = invoke("sweep", str(outside_the_checkout(tmp_path)), "--dry-run", "--executor",
                 "debug")
    # 46 evaluations of the measured run + random init's kNN vote at 3 seeds, the reference
    # the kNN claims check against (planned since #26)
    assert out.startswith("units: 21 pretraining, 49 evaluations; to run: upstream [base], "
                          "21 pretraining, 49 evaluations")
    assert "base-dino: DINO base (full) on fashion-mnist" in out
    assert "ssl dino, 1500 steps, lr 0.00025, batch 64" in out  # 0.001 x 64 / 256
    assert re.search(r"HPT-BN-mnist-200st-seed2-dino: HPT-BN \(bn\) on mnist .* ssl dino, "
                     r"200 steps, lr 0.001,", out)
    assert "/upstream-dino/base/checkpoints/final.pt" in out
    assert "ssl moco" not in out


def test_a_dino_unit_never_shares_a_checkpoint_or_result_with_a_moco_unit(tmp_path,
                                                                          mnist_tree):
    path = write_tiny_experiment(tmp_path, {"m": mnist_tree},
                                 {"s": {"method": ["Base", "HPT"], "dataset": ["m"],
                                        "steps": [2]}})
    moco, dino = load_experiment(str(path)), load_experiment(str(path), ["ssl=dino"])
    a, b = expand(moco), expand(dino)
    assert [u.unit_id for u in a.pretrain] == ["Base-m-0st-seed0", "HPT-m-2st-seed0"]
    assert [u.unit_id for u in b.pretrain] == ["Base-m-0st-seed0-dino", "HPT-m-2st-seed0-dino"]
    trained = lambda e: {u.unit_id for u in e.evals if u.pretrain}  # noqa: E731
    assert not trained(a) & trained(b)
    refs = lambda e: {u.unit_id for u in e.evals if not u.pretrain}  # noqa: E731
    assert refs(a) == refs(b)  # raw pixels and a random backbone: no ssl method
    assert moco.upstream_checkpoint("base") != dino.upstream_checkpoint("base")
    assert (moco.upstream_id("base"), dino.upstream_id("base")) == \
        ("upstream-base", "upstream-base-dino")
    target = TrackingTarget("sqlite:///x.db", "e", "e", "tiny-sweep")
    assert registry_init(moco, target, "base") == "models:/e@tiny-sweep-base"
    assert registry_init(dino, target, "base") == "models:/e@tiny-sweep-base-dino"

    # for real: the MoCo sweep finished (tracking off: its files), the DINO sweep of the
    # same file and folder finds nothing of it finished but the references
    out = invoke("sweep", str(path), "--executor", "debug")
    assert "next: hpt-hpc report" in out and "--ssl" not in out
    plan = invoke("sweep", str(path), "--dry-run", "--set", "ssl=dino")
    # units: 2 pretraining, 4 evaluations; only the 2 references are shared
    assert "units: 2 pretraining, 4 evaluations; to run: upstream [base], 2 pretraining, " \
           "2 evaluations" in plan
    again = invoke("sweep", str(path), "--dry-run")
    assert "to run: upstream [none], 0 pretraining, 0 evaluations" in again


def _dino_sweep(folder: Path, fashion: Path, mnist: Path) -> Path:
    """The real dino.yaml (its config and every `set:`) scaled down: a tiny backbone,
    2 base steps, one seed, Base and HPT at 3 steps, every probe mode, tracking off."""
    real = yaml.safe_load(DINO_FILE.read_text())
    tiny = ["model.width=0.125", "data.image_size=16", "optim.batch_size=8",
            "dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16",
            "probe.iterations=20", "probe.milestones=[10]", "probe.eval_every=10",
            "data.workers=0", "tracking.enabled=false", "checkpoint.every=2", "device=cpu"]
    data = {**real, "config": str((DINO_FILE.parent / real["config"]).resolve()),
            "datasets": {"fashion-mnist": {"path": str(fashion)},
                         "mnist": {"path": str(mnist)}},
            "prepare": {}, "output_dir": str(folder / "out"),
            "set": real["set"] + tiny,
            "upstream": {"base": {**real["upstream"]["base"], "iterations": 2}},
            "methods": {"Base": {"bn_batches": 2}, "HPT-BN": real["methods"]["HPT-BN"]},
            "studies": {"main": {**real["studies"]["main"], "method": ["Base", "HPT"],
                                 "steps": [3], "seed": [0],
                                 "probe_mode": ["cached", "knn", "augmented"]}}}
    path = folder / "dino.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_tiny_real_dino_sweep_reports_its_ssl_method(tmp_path, mnist_tree, fashion_tree):
    path = _dino_sweep(tmp_path, fashion_tree, mnist_tree)
    out = invoke("sweep", str(path), "--executor", "debug")
    # 2 x 3 + raw pixels + random init in each probe mode (cached, kNN, augmented)
    assert "to run: upstream [base], 2 pretraining, 10 evaluations" in out
    unit = tmp_path / "out" / "units" / "HPT-mnist-3st-seed0-dino"
    import torch
    state = torch.load(unit / "target" / "checkpoints" / "final.pt", map_location="cpu",
                       weights_only=False)
    assert state["ssl"] == "dino"
    assert (tmp_path / "out" / "upstream-dino" / "base" / "checkpoints" / "final.pt").is_file()

    report = tmp_path / "report"
    out = invoke("report", str(path), "--from-files", "--out", str(report))
    assert "(10 evaluations" in out
    md = (report / "dino.md").read_text()
    assert "Self-supervised method of every pretraining stage: DINO (`ssl: dino`)." in md
    with open(report / "dino.csv") as handle:
        rows = list(csv.DictReader(handle))
    ssl = {(r["method"], r["mode"].split(" ")[0]): r["ssl"] for r in rows}
    assert ssl == {("Base", "cached"): "dino", ("Base", "knn"): "dino",
                   ("Base", "augmented"): "dino", ("HPT", "augmented"): "dino",
                   ("HPT", "cached"): "dino", ("HPT", "knn"): "dino",
                   ("raw-pixels", "cached"): "", ("random-init", "cached"): "",
                   ("random-init", "knn"): "", ("random-init", "augmented"): ""}
    wrong = CliRunner().invoke(cli, ["report", str(path), "--from-files", "--out",
                                     str(report), "--ssl", "moco-v2"])
    assert wrong.exit_code == 2 and wrong.output.startswith("error: no finished evaluations "
                                                            "of sweep 'dino' with ssl moco-v2")


def _record(method: str, ssl: str, score: float, seed: int = 0) -> EvalRecord:
    return EvalRecord("linear", method, "m", "cached", "top1", score, steps=10, seed=seed,
                      ssl=ssl)


def test_a_report_never_averages_two_ssl_methods(tmp_path):
    mixed = [_record("HPT", "dino", 0.9), _record("HPT", "", 0.5, seed=1)]  # "": MoCo-v2
    try:
        build_report(mixed, tmp_path, "mixed")
    except Exception as error:  # the CLI turns it into one line
        assert str(error) == ("report: the evaluations of 'mixed' come from 2 ssl methods "
                              "(dino, moco-v2); report one at a time with --ssl <method>")
    else:
        raise AssertionError("a report mixing two ssl methods was written")
    assert not (tmp_path / "mixed.md").exists()
    single = build_report([_record("HPT", "", 0.5), _record("HPT", "", 0.7, seed=1)],
                          tmp_path, "old")
    assert "DINO" not in single.markdown and "MoCo-v2 (`ssl: moco-v2`)" in single.markdown
    assert "| HPT |  | 60.0 [" in single.markdown  # the mean of 0.5 and 0.7


def test_the_dino_continue_paper_config_plans_offline(tmp_path, mnist_tree, monkeypatch):
    """Validates and plans from a model cache holding the DINOv2 entry (a stand-in file:
    planning checks the entry, loading happens in the job); without it, one line naming
    the fetch command."""
    import torch
    from hubcache import as_bytes, hf_entry
    base = ["config", "show", "--config", str(PAPER), "--plan", "--set",
            f"datasets.target.path={mnist_tree}", "--set", "optim.batch_size=4"]
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "empty"))
    missing = CliRunner().invoke(cli, base)
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1
    assert ("run `hpt-hpc models fetch timm:vit_small_patch14_dinov2.lvd142m --cache "
            f"{tmp_path / 'empty'}`") in missing.output
    monkeypatch.setenv("HPT_MODEL_CACHE", str(tmp_path / "cache"))
    hf_entry(tmp_path / "cache/huggingface/hub", "timm/vit_small_patch14_dinov2.lvd142m",
             {"model.safetensors": as_bytes({"stand-in": torch.zeros(1)}, "safetensors")})
    for variant, method in (("full", "HPT"), ("bn", "HPT-BN"), ("last-blocks", "HPT-LB")):
        out = invoke(*base, "--set", f"stages.target.variant={variant}")
        # 5e-5 per 256 images at batch 4: 7.8125e-07
        assert (f"target: {method} ({variant}) on target [{mnist_tree}], init "
                f"timm:vit_small_patch14_dinov2.lvd142m, ssl dino, 5000 steps, lr 7.8125e-07, "
                f"batch 4") in out, out
    cfg = yaml.safe_load(PAPER.read_text())
    assert (cfg["optim"]["optimizer"], cfg["optim"]["clip_grad"]) == ("adamw", 3.0)
    assert cfg["augment"]["local_crops"]["size"] % 14 == 0  # whole ViT-S/14 patches


def test_a_dino_stage_before_the_target_is_tagged_dino(tmp_path, mnist_tree):
    from tiny import write_tiny_config
    cfg = write_tiny_config(tmp_path, {"m": mnist_tree},
                            {"base": {"dataset": "m"},
                             "target": {"dataset": "m", "init": "stage:base", "ssl": "moco-v2"}},
                            ssl="dino")
    out = invoke("config", "show", "--config", str(cfg), "--plan", "--chain")
    assert re.search(r"^  base: DINO base \(full\) on m .* ssl dino,", out, re.M), out
    assert re.search(r"^  target: HPT \(full\) on m .* ssl moco-v2,", out, re.M), out
    moco = invoke("config", "show", "--config", str(cfg), "--plan", "--chain", "--set",
                  "ssl=moco-v2")
    assert re.search(r"^  base: MoCo-v2 base \(full\) on m .* ssl moco-v2,", moco, re.M)
