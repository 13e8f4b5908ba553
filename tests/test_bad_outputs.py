"""What the commands write, under hostile conditions, through the real CLI (issue #24,
"outputs never clobber inputs"): every file goes through :mod:`hpt_hpc.files` (refuses an
output that is one of the command's inputs, hard links included; creates the parent
folders or says why not; writes atomically; the next run removes the temporaries a killed
one left; a read-only folder or a full disk is one ``error:`` line).

Issue case -> test:

* 1  export over its checkpoint (also by a hard link): ``test_export_never_replaces_its_checkpoint``
  (the same name: ``tests/test_outputs.py::test_an_output_never_overwrites_an_input``)
* 7  embed ``run.v1`` / ``run.v2``: ``tests/test_outputs.py::test_embed_out_is_a_prefix_taken_as_typed``
* 8  embed of a non-UTF-8 file name: ``test_embed_keeps_every_row_of_a_non_utf8_name``
* 14 temporaries of killed runs: ``test_the_next_run_removes_stale_temporaries``,
  ``test_a_sweep_removes_stale_feature_cache_temporaries`` (also: its report into a
  read-only folder)
* 22 export of a malformed checkpoint, a folder, a read-only folder, a full disk:
  ``test_export_of_a_malformed_checkpoint``, ``test_export_out_is_a_folder``,
  ``test_export_into_a_read_only_folder_or_a_full_disk``
* 23 embed into a read-only folder / a full disk:
  ``test_embed_into_a_read_only_folder_or_a_full_disk``
* 26 report without --out, train on a read-only mount, clean lists into a read-only folder,
  a full disk at a checkpoint save: ``test_report_without_out``,
  ``test_train_on_a_read_only_mount``, ``test_clean_list_into_a_read_only_folder``,
  ``test_a_full_disk_at_a_checkpoint_save_keeps_the_previous_one``
* 12 a corrupt last.pt with checkpoint.keep: ``test_a_corrupt_last_checkpoint_with_keep``
* 19, 25 clean lists of names with a line break or non-UTF-8 bytes:
  ``test_clean_list_of_awkward_names``
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from mounts import cli_in_mounts, full_disk, read_only, shell_in_mounts
from hpt_hpc.config import load_config
from hpt_hpc.files import this_host
from tiny import run_stage_of, write_tiny_config, write_tiny_experiment


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "HPT_MLFLOW_PARENT_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(output: str, text: str) -> str:
    """``output`` holds exactly one ``error:`` line, containing ``text``, no traceback."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], output
    return errors[0]


def assert_refused(result, text: str) -> str:
    """A CliRunner result or a finished process: exit 2 and one ``error:`` line."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    assert code == 2, output
    return one_error(output, text)


def files_under(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_tree) -> Path:
    """A tiny stage's final.pt (read only: tests copy it)."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_tiny_config(folder, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    result = invoke("train", "--config", config)
    assert result.exit_code == 0, result.output
    return folder / "out" / "target" / "checkpoints" / "final.pt"


def test_export_never_replaces_its_checkpoint(tmp_path, trained):
    checkpoint = tmp_path / "ck.pt"
    shutil.copy(trained, checkpoint)
    os.link(checkpoint, tmp_path / "same.pt")
    before = checkpoint.read_bytes()
    for out in (checkpoint, tmp_path / "same.pt"):
        assert_refused(invoke("export", checkpoint, "--out", out),
                       "is the checkpoint this command reads")
    assert checkpoint.read_bytes() == before and (tmp_path / "same.pt").read_bytes() == before


@pytest.mark.parametrize("change, text", [
    ({"model": "weights"}, "'model'"),
    ({"config": "a string"}, "'config'"),
    ({"config": None}, "'config'"),
])
def test_export_of_a_malformed_checkpoint(tmp_path, trained, change, text):
    state = torch.load(trained, map_location="cpu", weights_only=True)
    state.update(change)
    if change.get("config", 0) is None:
        del state["config"]
    checkpoint = tmp_path / "bad.pt"
    torch.save(state, checkpoint)
    result = invoke("export", checkpoint, "--out", tmp_path / "out" / "tv.pt")
    line = assert_refused(result, text)
    assert str(checkpoint) in line
    assert not (tmp_path / "out").exists()  # nothing written first


def test_export_out_is_a_folder(tmp_path, trained):
    result = invoke("export", trained, "--out", f"{tmp_path / 'newdir'}{os.sep}")
    assert_refused(result, "is a folder")
    assert not (tmp_path / "newdir").exists()
    (tmp_path / "there").mkdir()
    assert_refused(invoke("export", trained, "--out", tmp_path / "there"), "is a folder")
    assert not list((tmp_path / "there").iterdir())


def test_export_into_a_read_only_folder_or_a_full_disk(tmp_path, trained):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "tv.pt").write_bytes(b"an older export")
    result = cli_in_mounts(["export", trained, "--out", ro / "tv.pt"], [read_only(ro)])
    assert_refused(result, f"cannot write {ro / 'tv.pt'}: read-only file system")
    result = cli_in_mounts(["export", trained, "--out", ro / "sub" / "tv.pt"],
                           [read_only(ro)])
    assert_refused(result, f"cannot create the folder {ro / 'sub'}: read-only file system")
    assert files_under(ro) == {"tv.pt": b"an older export"}
    disk = tmp_path / "disk"
    result = cli_in_mounts(["export", trained, "--out", disk / "tv.pt"],
                           [full_disk(disk, 64)])
    assert_refused(result, f"cannot write {disk / 'tv.pt'}: disk full")
    assert not list(disk.iterdir())  # the mount is gone: the folder as it was


def embed_config(tmp_path, mnist_tree) -> Path:
    return write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})


def test_embed_into_a_read_only_folder_or_a_full_disk(tmp_path, mnist_tree):
    config = embed_config(tmp_path, mnist_tree)
    ro = tmp_path / "ro"
    ro.mkdir()
    base = ["embed", "--config", config, "--dataset", "mnist", "--split", "val"]
    result = cli_in_mounts([*base, "--out", ro / "emb"], [read_only(ro)])
    assert_refused(result, f"{ro / 'emb'}")
    assert "read-only file system" in result.stderr
    assert not list(ro.iterdir())
    disk = tmp_path / "disk"
    result = cli_in_mounts([*base, "--out", disk / "emb"], [full_disk(disk, 4)])
    assert_refused(result, "disk full")


def test_embed_keeps_every_row_of_a_non_utf8_name(tmp_path, mnist_tree):
    import numpy as np
    mine = tmp_path / "mine"
    mine.mkdir()
    pngs = sorted((mnist_tree / "test").rglob("*.png"))[:6]
    names = [b"\xff\xfe-odd.png", b"line\nbreak.png", b"a,b.png", b"x1.png", b"x2.png",
             b"x3.png"]
    for png, name in zip(pngs, names):
        shutil.copy(png, os.path.join(os.fsencode(mine), name))
    config = write_tiny_config(tmp_path, {"mine": mine}, {})
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["mine"]["format"] = "folder"
    config.write_text(yaml.safe_dump(raw))
    result = invoke("embed", "--config", config, "--dataset", "mine", "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    feats = np.load(tmp_path / "f.npy", allow_pickle=False)
    import csv
    with open(tmp_path / "f.index.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as handle:
        assert handle.readline().startswith("# root: ")
        rows = list(csv.DictReader(handle))
    assert feats.shape[0] == len(rows) == 6
    assert sorted(os.fsencode(r["path"]) for r in rows) == sorted(names)


def stale_temporaries(target: Path, kinds=("",)) -> list:
    """Temporary files of ``target`` as a killed run leaves them (its pid has ended)."""
    pid, made = dead_pid(), []
    for kind in kinds:
        tag = f".{kind}" if kind else ""
        path = target.with_name(f".{target.name}.{pid}@{this_host()}.0badc0de{tag}.tmp")
        path.write_bytes(b"half a file")
        made.append(path)
    return made


def test_the_next_run_removes_stale_temporaries(tmp_path, mnist_tree, trained):
    out = tmp_path / "x"
    out.mkdir()
    stale = stale_temporaries(out / "emb.npy", ("", "raw")) + stale_temporaries(
        out / "emb.index.csv") + stale_temporaries(out / "tv.pt")
    live = out / f".emb.npy.1@{this_host()}.0badc0de.tmp"  # pid 1 lives: another run's
    live.write_bytes(b"in progress")
    # a dead pid here may be a live process on another node of a shared filesystem: kept
    elsewhere = out / f".emb.npy.{dead_pid()}@other-node.0badc0de.tmp"
    elsewhere.write_bytes(b"in progress on other-node")
    other = out / ".notes.txt.12.0badc0de.tmp"  # not a temporary of these outputs
    other.write_bytes(b"someone else's")
    config = embed_config(tmp_path, mnist_tree)
    result = invoke("embed", "--config", config, "--dataset", "mnist", "--split", "val",
                    "--out", out / "emb")
    assert result.exit_code == 0, result.output
    assert invoke("export", trained, "--out", out / "tv.pt").exit_code == 0
    assert not [p for p in stale if p.exists()]
    assert live.exists() and other.exists() and elsewhere.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "emb.index.csv", "emb.npy", "tv.pt"]


def test_a_sweep_removes_stale_feature_cache_temporaries(tmp_path, mnist_tree):
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["Base"], "dataset": ["mnist"]}})
    assert invoke("sweep", experiment, "--executor", "debug").exit_code == 0
    results = sorted((tmp_path / "out").glob("units/Base-*/results/*.json"))  # cached
    assert results
    stale = []
    for result_file in results:
        stale += stale_temporaries(result_file.with_suffix(".features.pt"))
        result_file.unlink()  # the evaluation runs again
    swept = invoke("sweep", experiment, "--executor", "debug")
    assert swept.exit_code == 0, swept.output
    assert not [p for p in stale if p.exists()]
    # its report into a read-only folder: one line, nothing written
    ro = tmp_path / "ro"
    ro.mkdir()
    result = cli_in_mounts(["report", experiment, "--from-files", "--out", ro / "report"],
                           [read_only(ro)])
    assert_refused(result, f"cannot create the folder {ro / 'report'}: read-only file system")
    assert not list(ro.iterdir())


def test_report_without_out(tmp_path):
    result = invoke("report", "--tracking-uri", f"file:{tmp_path / 'mlruns'}", "--name", "x")
    assert_refused(result, "--out")
    assert not (tmp_path / "mlruns").exists()


def test_train_on_a_read_only_mount(tmp_path, mnist_tree):
    ro = tmp_path / "ro"
    ro.mkdir()
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    raw = yaml.safe_load(config.read_text())
    raw["output_dir"] = str(ro / "out")
    config.write_text(yaml.safe_dump(raw))
    result = cli_in_mounts(["train", "--config", config], [read_only(ro)])
    line = assert_refused(result, "read-only file system")
    assert str(ro / "out") in line and result.stderr.strip() == line, result.stderr


def test_clean_list_into_a_read_only_folder(tmp_path, mnist_tree):
    ro = tmp_path / "ro"
    ro.mkdir()
    result = cli_in_mounts(["data", "check", mnist_tree, "--channels", "1",
                            "--write-clean-list", ro / "clean"], [read_only(ro)])
    assert_refused(result, f"cannot write {ro / 'clean-train.csv'}: read-only file system")
    assert not list(ro.iterdir())


def test_clean_list_of_awkward_names(tmp_path, mnist_tree):
    """A name a CSV file list cannot give back exactly (a line break: read back as two
    bogus records; bytes that are not UTF-8) is refused, naming it, before any list is
    written."""
    data = tmp_path / "data"
    shutil.copytree(mnist_tree, data)
    first = sorted((data / "train" / "0").glob("*.png"))
    os.rename(first[0], data / "train" / "0" / "line\nbreak.png")
    result = invoke("data", "check", data, "--channels", "1",
                    "--write-clean-list", tmp_path / "clean")
    assert_refused(result, "line\\nbreak.png")
    assert not list(tmp_path.glob("clean*"))
    os.rename(data / "train" / "0" / "line\nbreak.png", first[0])
    os.rename(first[1], os.path.join(os.fsencode(data / "train" / "0"), b"\xff.png"))
    result = invoke("data", "check", data, "--channels", "1",
                    "--write-clean-list", tmp_path / "clean2")
    assert_refused(result, "/0/\\xff.png has a line break or bytes that are not UTF-8")
    assert not list(tmp_path.glob("clean2*"))


def write_keep_config(tmp_path, mnist_tree, iterations: int) -> Path:
    return write_tiny_config(tmp_path, {"mnist": mnist_tree},
                             {"target": {"dataset": "mnist", "iterations": iterations}},
                             checkpoint={"every": 2, "keep": 2})


def test_a_corrupt_last_checkpoint_with_keep(tmp_path, mnist_tree):
    config = write_keep_config(tmp_path, mnist_tree, 6)
    checkpoints = tmp_path / "out" / "target" / "checkpoints"
    run_stage_of(load_config(str(config)), "target", stop_after=4)  # saves at 2 and 4
    assert (checkpoints / "previous.pt").is_file()
    (checkpoints / "last.pt").write_bytes(b"not a checkpoint")
    resumed = invoke("train", "--config", config)
    assert resumed.exit_code == 0, resumed.output
    state = torch.load(checkpoints / "final.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 6


def test_a_full_disk_at_a_checkpoint_save_keeps_the_previous_one(tmp_path, mnist_tree):
    """Room for one checkpoint (about 2.2 MB): the save at step 2 fits, the one at step 4
    does not; last.pt stays the step-2 checkpoint, loadable, and no temporary is left."""
    disk = tmp_path / "disk"
    config = write_keep_config(tmp_path, mnist_tree, 6)
    raw = yaml.safe_load(config.read_text())
    raw["output_dir"] = str(disk / "out")
    config.write_text(yaml.safe_dump(raw))
    checkpoints = disk / "out" / "target" / "checkpoints"
    python = shlex.quote(sys.executable)
    script = (f"{python} -m hpt_hpc.cli.main train --config {shlex.quote(str(config))}; "
              f"echo rc=$?; {python} -c {shlex.quote(READ_STEP)} {shlex.quote(str(checkpoints))}")
    result = shell_in_mounts(script, [full_disk(disk, 3600)])
    assert "rc=2" in result.stdout, result.stdout + result.stderr
    line = one_error(result.stderr, f"cannot write {checkpoints / 'last.pt'}: disk full")
    assert "previous checkpoint" in line
    assert "last.pt step 2" in result.stdout and "temporaries []" in result.stdout, \
        result.stdout


READ_STEP = """
import sys, torch
from pathlib import Path
folder = Path(sys.argv[1])
print("last.pt step", torch.load(folder / "last.pt", weights_only=True)["step"])
print("temporaries", sorted(p.name for p in folder.glob(".*")))
"""
