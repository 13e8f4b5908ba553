"""What the commands write, through the real CLI: output names taken as typed (never a
suffix stripped), no output over one of the command's inputs, files created as the umask
says (colleagues in a shared folder can read them), embeddings of unlabelled folders with
paths relative to the listing's root, and results files that name paths relative to the
experiment's output folder."""
from __future__ import annotations

import csv
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from tiny import write_tiny_config, write_tiny_experiment


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_index(path: Path):
    """The documented way to read an embedding index: the root line, then a CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        first = handle.readline()
        assert first.startswith("# root: ")
        return first[len("# root: "):].rstrip("\n"), list(csv.DictReader(handle))


def test_embed_out_is_a_prefix_taken_as_typed(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    base = ["embed", "--config", config, "--dataset", "mnist", "--split", "val"]
    for name in ("hpt.v1", "hpt.v2"):
        out = invoke(*base, "--out", tmp_path / "emb" / name)
        assert out.exit_code == 0, out.output
        assert f"{name}.npy" in out.output and f"{name}.index.csv" in out.output
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == [
        "hpt.v1.index.csv", "hpt.v1.npy", "hpt.v2.index.csv", "hpt.v2.npy"]
    typed = invoke(*base, "--out", tmp_path / "emb" / "val.npy")
    assert typed.exit_code == 2 and typed.output.count("\n") == 1, typed.output
    assert typed.output.startswith("error: the output name") and "name prefix" in typed.output
    assert f"(give '{tmp_path / 'emb' / 'val'}')" in typed.output
    assert not (tmp_path / "emb" / "val.npy").exists()


def test_an_output_never_overwrites_an_input(tmp_path, mnist_tree):
    # a file-list dataset whose test list is named like an embedding index
    data = tmp_path / "data"
    shutil.copytree(mnist_tree / "test", data / "images")
    lines = [f"images/{p.parent.name}/{p.name},{p.parent.name}"
             for p in sorted((data / "images").rglob("*.png"))]
    (data / "test.index.csv").write_text("\n".join(lines) + "\n")
    listing = (data / "test.index.csv").read_bytes()
    config = write_tiny_config(tmp_path, {"d": data}, {})
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["d"].update(format="filelist", splits={"test": "test.index.csv"})
    config.write_text(yaml.safe_dump(raw))
    out = invoke("embed", "--config", config, "--dataset", "d", "--out", data / "test")
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert out.output.startswith("error: ") and "test.index.csv" in out.output
    assert (data / "test.index.csv").read_bytes() == listing
    assert not (data / "test.npy").exists()
    # export over the checkpoint it reads
    checkpoint = tmp_path / "ck.pt"
    (tmp_path / "t").mkdir()
    train = write_tiny_config(tmp_path / "t", {"mnist": mnist_tree},
                              {"target": {"dataset": "mnist", "iterations": 2}})
    assert invoke("train", "--config", train).exit_code == 0
    shutil.copy(tmp_path / "t" / "out" / "target" / "checkpoints" / "final.pt", checkpoint)
    before = checkpoint.read_bytes()
    exported = invoke("export", checkpoint, "--out", checkpoint)
    assert exported.exit_code == 2 and exported.output.count("\n") == 1, exported.output
    assert "is the checkpoint this command reads" in exported.output
    assert checkpoint.read_bytes() == before


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


def test_embed_of_an_unlabelled_folder_with_relative_paths(tmp_path, mnist_tree):
    mine = tmp_path / "my images"
    for i, png in enumerate(sorted((mnist_tree / "test").rglob("*.png"))[:12]):
        target = mine / ("a" if i % 2 else "b/c") / f"{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, target)
    config = write_tiny_config(tmp_path, {"mine": mine, "mnist": mnist_tree}, {})
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["mine"]["format"] = "folder"
    config.write_text(yaml.safe_dump(raw))
    out = invoke("embed", "--config", config, "--dataset", "mine", "--out", tmp_path / "f")
    assert out.exit_code == 0, out.output
    feats = np.load(tmp_path / "f.npy", allow_pickle=False)
    root, rows = read_index(tmp_path / "f.index.csv")
    assert root == str(mine.resolve()) and feats.shape[0] == len(rows) == 12
    assert [r["row"] for r in rows] == [str(i) for i in range(12)]
    assert all(not os.path.isabs(r["path"]) and r["labels"] == "" for r in rows)
    assert sorted(r["path"] for r in rows) == sorted(
        str(p.relative_to(mine)) for p in mine.rglob("*.png"))
    # labelled data: relative paths too, each with the label of its class folder
    out = invoke("embed", "--config", config, "--dataset", "mnist", "--split", "val",
                 "--out", tmp_path / "v")
    assert out.exit_code == 0, out.output
    root, rows = read_index(tmp_path / "v.index.csv")
    assert root == str((mnist_tree / "val").resolve())
    assert all(os.path.isfile(os.path.join(root, r["path"])) for r in rows)
    classes = sorted(p.name for p in (mnist_tree / "val").iterdir())
    assert all(r["labels"] == str(classes.index(r["path"].split("/")[0])) for r in rows)


def test_report_csv_names_checkpoints_relative_to_the_output_folder(tmp_path, mnist_tree):
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["Base"], "dataset": ["mnist"]}})
    swept = invoke("sweep", experiment, "--executor", "debug")
    assert swept.exit_code == 0, swept.output
    report = invoke("report", experiment, "--from-files")
    assert report.exit_code == 0, report.output
    with open(tmp_path / "out" / "report" / "tiny-sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    named = [r["checkpoint"] for r in rows if r["checkpoint"] != "none"]
    assert named and len(rows) == 3  # Base, and the two references without a checkpoint
    for path in named:
        assert not os.path.isabs(path) and path.startswith("units/"), path
        assert (tmp_path / "out" / path).is_file()


def test_clean_list_names_are_a_prefix_taken_as_typed(tmp_path, mnist_tree):
    """data check --write-clean-list: PREFIX-<split>.csv, never a suffix stripped (clean.v1
    and clean.v2 were both clean-<split>.csv), never over the file list it checks."""
    for name in ("clean.v1", "clean.v2"):
        out = invoke("data", "check", mnist_tree, "--channels", "1",
                  "--write-clean-list", tmp_path / name)
        assert out.exit_code == 0, out.output
    for name in ("clean.v1", "clean.v2"):
        for split in ("train", "val", "test"):
            assert (tmp_path / f"{name}-{split}.csv").is_file()
    assert_one_error(invoke("data", "check", mnist_tree, "--write-clean-list",
                         tmp_path / "clean.csv"), "give '")
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "train.csv").write_text((tmp_path / "clean.v1-train.csv").read_text())
    os.link(listed / "train.csv", listed / "x-train.csv")  # the same file by another name
    before = (listed / "train.csv").read_text()
    result = invoke("data", "check", listed, "--format", "filelist", "--channels", "1",
                    "--write-clean-list", listed / "x")
    assert_one_error(result, "an output never replaces an input")
    assert (listed / "train.csv").read_text() == before


def assert_one_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in result.output, \
        result.output


def test_two_evaluations_in_one_second_keep_both_results(tmp_path, mnist_tree, monkeypatch):
    """Two probes of one checkpoint started within the same second (the clock frozen) write
    two result files; neither replaces the other."""
    import json
    import hpt_hpc.eval.execute as execute
    monkeypatch.setattr(execute.time, "strftime", lambda *_: "20261205-120000")
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    for k in (1, 5):
        out = invoke("probe", "--config", config, "--dataset", "mnist", "--set",
                     "probe.mode=knn", "--set", f"probe.knn_k={k}")
        assert out.exit_code == 0, out.output
    files = sorted((tmp_path / "out" / "evaluations").glob("*-20261205-120000-*.json"))
    assert len(files) == 2, files
    scores = {json.loads(f.read_text())["score"] for f in files}
    assert len(scores) == 2  # k=1 and k=5: both results kept
