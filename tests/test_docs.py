"""What the README and docs tell a new user is true: the datasets `data prepare` knows,
the probe modes, shell completion, and why the MoCo loss rises while the queue fills."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import load_config
from hpt_hpc.config.schema import PROBE_MODES
from hpt_hpc.data import build_pretrain_loader, list_split
from hpt_hpc.data.prepare import DATASETS
from hpt_hpc.ssl import MoCo
from tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
NUMBERS = {2: "Two", 3: "Three", 4: "Four", 5: "Five"}


def test_every_prepared_dataset_is_offered_and_listed():
    out = CliRunner().invoke(cli, ["data", "prepare", "--help"])
    assert out.exit_code == 0
    offered = re.search(r"\{([^}]+)\}", out.output)[1].split("|")
    assert offered == list(DATASETS)
    listed = re.search(r"hpt-hpc data prepare .*# offline: (.+)\n",
                       (REPO / "README.md").read_text())[1]
    assert listed.split(", ") == list(DATASETS)


def test_the_evaluation_doc_names_every_probe_mode():
    text = (REPO / "docs" / "evaluation.md").read_text()
    assert f"{NUMBERS[len(PROBE_MODES)]} modes (`probe.mode`):" in text
    section = text.split("modes (`probe.mode`):", 1)[1].split("`repeats:", 1)[0]
    assert re.findall(r"^\* \*\*`(\w+)`\*\*", section, re.M) == list(PROBE_MODES)


def _console(env: dict, *args) -> str:
    script = Path(sys.executable).with_name("hpt-hpc")
    assert script.is_file(), "the hpt-hpc console script is installed next to python"
    out = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_shell_completion_as_the_readme_says():
    """`_HPT_HPC_COMPLETE=bash_source hpt-hpc` prints the script; the completions it asks
    for name commands and choice values."""
    script = _console({"_HPT_HPC_COMPLETE": "bash_source"})
    assert "_hpt_hpc_completion()" in script and "complete -o nosort -F" in script
    assert "_HPT_HPC_COMPLETE=bash_source hpt-hpc" in (REPO / "README.md").read_text()
    words = _console({"_HPT_HPC_COMPLETE": "bash_complete", "COMP_WORDS": "hpt-hpc ex",
                      "COMP_CWORD": "1"})
    assert words.split() == ["plain,export"]
    values = _console({"_HPT_HPC_COMPLETE": "bash_complete",
                       "COMP_WORDS": "hpt-hpc data prepare mn", "COMP_CWORD": "3"})
    assert values.split() == ["plain,mnist", "plain,mnist-source"]
    assert "zsh_source" in (REPO / "README.md").read_text()
    assert "compdef" in _console({"_HPT_HPC_COMPLETE": "zsh_source"})


def test_the_loss_rises_toward_log_k_plus_one_while_the_queue_fills(tmp_path, mnist_tree):
    """The README's explanation, with nothing learned (no optimiser step): the random
    queue's easy negatives give a low first loss; once K / batch steps have replaced them
    with real keys the loss sits near log(K+1)."""
    cfg = tiny_config(tmp_path, {"m": mnist_tree}, {"target": {"dataset": "m"}})
    queue, batch = 256, 32
    torch.manual_seed(0)
    model = MoCo.from_config(cfg.model, cfg.moco, queue_size=queue)
    records, _ = list_split(cfg.datasets["m"], "train")
    losses = []
    with torch.no_grad():
        while len(losses) < 2 * queue // batch:
            for views in build_pretrain_loader(records, cfg.augment, cfg.data, batch, 0):
                losses.append(model(*views)[0].item())
                if len(losses) == 2 * queue // batch:
                    break
    filled = losses[queue // batch:]
    assert losses[0] < math.log(queue + 1) - 1.0, losses
    assert all(abs(v - math.log(queue + 1)) < 0.6 for v in filled), (losses, math.log(257))
    quickstart = load_config(REPO / "hpt_hpc" / "resources" / "quickstart.yaml")
    k, b = quickstart.moco.queue_size, quickstart.optim.batch_size
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"{math.log(k + 1):.1f} for the quickstart's base stage, K = {k:,} — over "
            f"the first K / batch steps ({k // b} there)") in readme
