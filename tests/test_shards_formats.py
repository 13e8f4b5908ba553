"""`hpt-hpc data shard` packs every format the toolkit reads (#28): multi-band TIFFs, file
lists with several labels, unlabelled folders; the packed split gives the same records
and the same statistics as the original, and a stage trains on it."""
import json
import re
import shutil

from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import DatasetConfig, StageLayout
from hpt_hpc.data import list_split
from hpt_hpc.plan.record import StageRecord
from test_bands import BANDS, _band_tree, _config


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _records(ds):
    table, classes = list_split(ds, "train")
    return sorted((table.relative_path(i), table.labels_of(i)) for i in range(len(table))), \
        classes


def test_multi_band_tiffs_pack_measure_and_train_from_shards(tmp_path, mnist_tree):
    tree = _band_tree(mnist_tree, tmp_path / "bands", splits=("train",))
    out = _invoke("data", "shard", tree, tmp_path / "shards", "--split", "train")
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "shards" / "train" / "manifest.json").read_text())
    assert manifest["bands"] == {str(BANDS): 200}
    assert manifest["dali_indirect"]["count"] == 200  # TIFF: never DALI's decoder
    shutil.rmtree(tree)  # from here on every band comes from the tars
    tree = _band_tree(mnist_tree, tmp_path / "again", splits=("train",))
    stats = [_invoke("data", "stats", path, "--channels", BANDS, *extra).output
             for path, extra in ((tree, ()), (tmp_path / "shards", ("--format", "shards")))]
    means = [re.search(r"mean: (\[[^\]]*\])\n\s*std: (\[[^\]]*\])", s).groups() for s in stats]
    assert means[0] == means[1], stats
    config = _config(tmp_path, {"bands": tmp_path / "shards"},
                     {"target": {"dataset": "bands", "iterations": 3}})
    trained = _invoke("train", "--config", config, "--set", "datasets.bands.format=shards")
    assert trained.exit_code == 0, trained.output
    result = StageRecord.read(StageLayout(tmp_path / "out", "target"))
    assert result.steps == 3 and not result.skipped_images, result


def test_a_multi_label_file_list_packs_with_every_label(tmp_path, mnist_tree):
    images = sorted((mnist_tree / "val").glob("*/*.png"))[:30]
    lines = ["path,labels"] + [f"{p},{p.parent.name},{(int(p.parent.name) + 1) % 10}"
                               for p in images[:-1]] + [f"{images[-1]}"]
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "train.csv").write_text("\n".join(lines) + "\n")
    src = DatasetConfig(path=str(tmp_path / "list"), format="filelist",
                        splits={"train": "train.csv"})
    out = _invoke("data", "shard", tmp_path / "list", tmp_path / "shards", "--format",
                  "filelist", "--split", "train")
    assert out.exit_code == 0, out.output
    packed = DatasetConfig(path=str(tmp_path / "shards"), format="shards")
    assert _records(packed) == _records(src)
    table, _ = list_split(packed, "train")
    assert table.multi_label and table.labels_of(
        [table.relative_path(i) for i in range(len(table))].index(str(images[-1]))) == ()


def test_an_unlabelled_folder_packs_and_pretrains(tmp_path, mnist_tree):
    for i, png in enumerate(sorted((mnist_tree / "val").glob("*/*.png"))[:40]):
        target = tmp_path / "pics" / f"day{i % 3}" / f"{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, target)
    out = _invoke("data", "shard", tmp_path / "pics", tmp_path / "shards", "--format",
                  "folder", "--split", "train")
    assert out.exit_code == 0, out.output
    packed = DatasetConfig(path=str(tmp_path / "shards"), format="shards")
    src = DatasetConfig(path=str(tmp_path / "pics"), format="folder", splits={"train": "."})
    assert _records(packed)[0] == _records(src)[0] and len(_records(packed)[0]) == 40
    from hpt_hpc.data import build_pretrain_loader
    from tiny import tiny_config
    cfg = tiny_config(tmp_path, {"p": tmp_path / "shards"}, {"target": {"dataset": "p"}})
    table, _ = list_split(packed, "train")
    views = next(iter(build_pretrain_loader(table, cfg.augment, cfg.data, 8, seed=0)))
    assert len(views) == 2 and views[0].shape == (8, 1, 16, 16)


def test_packing_an_empty_or_missing_source_is_one_line(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    for path in (tmp_path / "empty", tmp_path / "missing"):
        out = _invoke("data", "shard", path, tmp_path / "out")
        assert out.exit_code == 2 and out.output.count("\n") == 1, out.output


def test_an_index_or_a_clean_list_of_shards_is_refused_in_one_line(tmp_path, mnist_tree):
    out = _invoke("data", "shard", mnist_tree, tmp_path / "shards", "--split", "val")
    assert out.exit_code == 0, out.output
    for args in (("index", tmp_path / "shards", "--format", "shards", "--split", "val"),
                 ("check", tmp_path / "shards", "--format", "shards", "--write-clean-list",
                  tmp_path / "clean")):
        out = _invoke("data", *args)
        assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert not list(tmp_path.glob("clean*")) and not list(tmp_path.glob(".*index*"))
