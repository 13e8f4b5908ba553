"""The command line: fast help, clear errors, data commands, a short quickstart."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch():
    code = ("import sys; from hpt_hpc.cli.main import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "quickstart" in out and out.strip().endswith("NOTORCH")


def test_config_error_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(cli, ["config", "show", "--config",
                                      str(ROOT / "configs/paper/hpt.yaml"),
                                      "--set", "moco.queue_sise=10"])
    assert result.exit_code == 2
    assert "unknown config key 'moco.queue_sise'" in result.output
    assert "did you mean 'queue_size'" in result.output
    assert "Traceback" not in result.output


def test_config_show_applies_override():
    result = CliRunner().invoke(cli, ["config", "show", "--config",
                                      str(ROOT / "configs/paper/hpt.yaml"),
                                      "--set", "optim.lr=0.5"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.5" in result.output


def test_train_missing_dataset_fails_before_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'out'}\n"
                   f"datasets: {{t: {{path: {tmp_path / 'nowhere'}}}}}\n"
                   "stages: {target: {dataset: t}}\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(cfg)])
    assert result.exit_code == 2
    assert str(tmp_path / "nowhere") in result.output
    assert not (tmp_path / "out" / "target" / "checkpoints").exists()


def test_data_check_exit_codes(tmp_path, mnist_tree):
    """0: usable, the unreadable file listed (training skips it); 2 with --strict, and
    for a split without one readable image; the codes are in --help."""
    import shutil
    tree = tmp_path / "tree"
    shutil.copytree(mnist_tree, tree)
    victim = next((tree / "train" / "3").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:40])
    result = CliRunner().invoke(cli, ["data", "check", str(tree), "--channels", "1"])
    assert result.exit_code == 0, result.output
    assert victim.name in result.output and "status: usable, with PROBLEMS (1 unreadable" \
        in result.output
    strict = CliRunner().invoke(cli, ["data", "check", str(tree), "--channels", "1",
                                      "--strict"])
    assert strict.exit_code == 2 and victim.name in strict.output
    assert strict.output.splitlines()[-1] == f"error: 1 unreadable image(s) in {tree} (--strict)"
    for png in (tree / "val").rglob("*.png"):
        png.write_bytes(b"")
    broken = CliRunner().invoke(cli, ["data", "check", str(tree), "--channels", "1"])
    assert broken.exit_code == 2 and broken.output.splitlines()[-1] == \
        f"error: dataset {tree} is not usable: no readable image in val"
    helped = CliRunner().invoke(cli, ["data", "check", "--help"])
    assert re.search(r"Exit codes:\n +0  usable: .*\n.*\n +2  not usable", helped.output)


def test_quickstart_end_to_end_small(tmp_path):
    """The main job at toy size: every method and both reference rows get a probe score."""
    overrides = ["model.width=0.125", "optim.batch_size=32", "moco.queue_size=256",
                 "probe.iterations=100", "probe.milestones=[60]", "data.workers=0"]
    args = ["quickstart", "--output", str(tmp_path / "qs"), "--data-dir", str(tmp_path / "d"),
            "--budgets", "4", "--base-steps", "6"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "qs" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = [r["method"] for r in rows]
    assert methods == ["raw pixels (reference)", "random init (reference)", "Base", "HPT",
                       "Target", "HPT-BN"]
    pixels = float(rows[0]["test_acc"])
    assert 0.8 < pixels <= 1.0, "a linear probe on raw MNIST pixels reaches ~88%"
    assert all(0.1 < float(r["test_acc"]) <= 1.0 for r in rows)
    png = (tmp_path / "qs" / "probe_vs_steps.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert "| HPT | 4 |" in (tmp_path / "qs" / "results.md").read_text()
    _assert_machine_facts(tmp_path / "qs")


def _assert_machine_facts(folder: Path) -> None:
    """machine.json holds what decides the bits, each checked against its own source."""
    import os
    import torch
    facts = json.loads((folder / "machine.json").read_text())
    base = json.loads((folder / "upstream" / "base" / "result.json").read_text())
    assert facts["torch_threads"] == base["threads"] == len(os.sched_getaffinity(0))
    assert facts["loader_workers"] == 0
    assert facts["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["versions"]["torch"] == torch.__version__
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.startswith("model name"))
    assert facts["cpu"] == model
    assert ("avx2" in facts["isa_flags"]) == (" avx2" in cpuinfo)
    assert f"Machine: {model}" in (folder / "results.md").read_text()


def test_config_show_plan_prints_what_would_run(tmp_path, mnist_tree):
    from tiny import write_tiny_config
    cfg = write_tiny_config(tmp_path, {"m": mnist_tree},
                            {"base": {"dataset": "m"},
                             "target": {"dataset": "m", "init": "stage:base", "lr": 0.1}},
                            optim={"lr": 0.05, "batch_size": 8, "iterations": 4,
                                   "lr_batch_reference": 4},
                            grid={"seed": [0, 1]})
    result = CliRunner().invoke(cli, ["config", "show", "--config", str(cfg), "--plan",
                                      "--chain", "--world-size", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "phase base (1 job)"
    assert lines[2] == "phase target (2 jobs, afterok base)"
    # linear scaling (0.1 x 8 / 4) and the per-rank batch are resolved in the plan
    assert "target-seed=0: HPT (full) on m" in lines[3] and "lr 0.2, batch 8 (4/rank x 2)" in lines[3]
    # tracking off: the chain hands over base's final file (pinned for grid cells)
    assert f"init {tmp_path / 'out/base/checkpoints/final.pt'}," in lines[3]
    assert str(tmp_path / "out/grid/seed=1/target/checkpoints/final.pt") in lines[4]
    bad = CliRunner().invoke(cli, ["config", "show", "--config", str(cfg), "--plan",
                                   "--stage", "target"])
    assert bad.exit_code == 2 and "neither in this --chain nor finished" in bad.output


@pytest.mark.parametrize("budgets", ["25,x", ",", "0,100", "-5"])
def test_quickstart_refuses_bad_budgets_before_work(tmp_path, budgets):
    result = CliRunner().invoke(cli, ["quickstart", "--output", str(tmp_path / "qs"),
                                      "--data-dir", str(tmp_path / "d"), f"--budgets={budgets}"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--budgets" in errors[0]
    assert not (tmp_path / "qs").exists() and not (tmp_path / "d").exists()
