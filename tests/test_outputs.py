"""What the commands write, through the real CLI: files created as the umask says
(colleagues in a shared folder can read them)."""
from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from tiny import write_tiny_config


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(tmp_path, mnist_tree, umask):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    previous = os.umask(umask)
    try:
        assert invoke("train", "--config", config).exit_code == 0
        final = tmp_path / "out" / "target" / "checkpoints" / "final.pt"
        assert invoke("export", final, "--out", tmp_path / "x" / "tv.pt").exit_code == 0
        out = invoke("embed", "--config", config, "--dataset", "mnist", "--checkpoint",
                     "stage:target", "--out", tmp_path / "x" / "emb")
        assert out.exit_code == 0, out.output
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"]
    names = {p.name for p in files}
    assert {"final.pt", "last.pt", "result.json", "tv.pt", "emb.npy",
            "emb.index.csv"} <= names
    assert not [p for p in files if ".tmp" in p.name or p.name.endswith(".raw")]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
