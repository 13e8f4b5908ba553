"""DALI loaders on real files: backend dispatch, device choice, sharding, resume, seeds,
broken and unusual images, ``data check`` clean lists, and the stage engine fed by DALI."""
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_config
from test_dali_common import DEVICE, data_config, only

from hpt_hpc.config import DatasetConfig, config_from_dict
from hpt_hpc.data import ImageRecord, build_eval_loader, build_pretrain_loader, list_split
from hpt_hpc.data.check import check_dataset, format_report
from hpt_hpc.errors import HptError

pytest.importorskip("nvidia.dali")
from hpt_hpc.data.dali_loader import DaliEvalLoader, DaliPretrainLoader, pipeline_seed  # noqa
from hpt_hpc.data.dali_pipelines import gpu_available, resolve_device  # noqa: E402


@pytest.fixture(scope="module")
def digits(mnist_tree):
    return list_split(DatasetConfig(path=str(mnist_tree)), "train")[0]


def _grey28(backend="dali"):
    cfg = data_config(backend, 28, channels=1)
    cfg.workers = int(backend == "dali")
    return cfg


def _rows(batch):
    """Each image of a batch as hashable bytes (identifies the source image)."""
    return [row.cpu().numpy().tobytes() for row in batch]


def test_device_choice_and_dispatch(digits):
    """auto picks the GPU only when one is visible; gpu without one is a clear error;
    ``data.backend`` alone decides which loader the builders return."""
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("gpu" if gpu_available() else "cpu")
    with pytest.raises(HptError, match="is not one of auto, cpu, gpu"):
        resolve_device("cuda")
    if not gpu_available():
        with pytest.raises(HptError, match="no CUDA GPU is visible; use --set data.device=cpu"):
            resolve_device("gpu")
        cfg = data_config("dali", 16, 1)
        cfg.device = "gpu"
        with pytest.raises(HptError, match="data.device 'gpu'"):
            build_pretrain_loader(digits, only(), cfg, 8, 0)
    loader = build_pretrain_loader(digits, only(), _grey28(), 8, 0)
    assert isinstance(loader, DaliPretrainLoader) and loader.num_images == len(digits)
    assert isinstance(build_eval_loader(digits, _grey28(), 8), DaliEvalLoader)
    assert type(build_pretrain_loader(digits, only(), _grey28("torchvision"), 8, 0)).__name__ \
        == "PretrainLoader"
    cfg = config_from_dict({}, overrides=["data.backend=dali", "data.device=cpu"])
    assert (cfg.data.backend, cfg.data.device) == ("dali", "cpu")


def test_shards_disjoint_equal_steps_global_reshuffle(digits):
    """Two ranks: disjoint shards of equal length, the same steps per epoch, a new global
    permutation every epoch (ranks exchange images), reproducible from the seed."""
    records = digits[:100]  # 50 per rank, 6 steps of 8, 2 images left out per rank
    loaders = [build_pretrain_loader(records, only(), _grey28(), 8, seed=5, rank=r,
                                     world_size=2) for r in (0, 1)]
    assert [l.steps_per_epoch for l in loaders] == [6, 6]
    epochs = []
    for loader in loaders:
        stream = iter(loader)
        batches = [_rows(next(stream)[0]) for _ in range(12)]
        epochs.append([sum(batches[:6], []), sum(batches[6:], [])])
        loader.close()
    (r0e0, r0e1), (r1e0, r1e1) = epochs
    assert len(set(r0e0)) == len(set(r1e0)) == 48 and not set(r0e0) & set(r1e0)
    assert not set(r0e1) & set(r1e1)
    assert set(r0e1) != set(r0e0) and set(r0e1) & set(r1e0)  # global reshuffle
    again = iter(build_pretrain_loader(records, only(), _grey28(), 8, seed=5, rank=0,
                                       world_size=2))
    assert _rows(next(again)[0]) == r0e0[:8]
    other = iter(build_pretrain_loader(records, only(), _grey28(), 8, seed=6, rank=0,
                                       world_size=2))
    assert _rows(next(other)[0]) != r0e0[:8]


def test_resume_positions_the_stream(digits):
    """``set_epoch(e, s)`` (and ``start_epoch/start_step``) starts at batch s of epoch e:
    without augmentation the batches equal the uninterrupted stream's."""
    records = digits[:40]
    full = build_pretrain_loader(records, only(), _grey28(), 8, seed=1)
    stream = iter(full)
    uninterrupted = [next(stream)[0] for _ in range(8)]  # 5 steps per epoch
    assert (full.epoch, full.step) == (1, 3)
    resumed = build_pretrain_loader(records, only(), _grey28(), 8, seed=1, start_epoch=1,
                                    start_step=2)
    assert torch.equal(next(iter(resumed))[0], uninterrupted[7])
    resumed.set_epoch(0, 1)
    stream = iter(resumed)
    assert torch.equal(next(stream)[0], uninterrupted[1])
    assert torch.equal(next(stream)[0], uninterrupted[2])
    with pytest.raises(ValueError, match="outside epoch"):
        resumed.set_epoch(0, 6)


def test_eval_labels_single_and_multi(digits):
    """Labels as the torchvision loader gives them: int64, or float multi-hot (B, classes)."""
    multi = [ImageRecord(r.path, (1, 4)) for r in digits[:3]] + digits[3:6]
    images, labels = next(iter(build_eval_loader(multi, _grey28(), 6, num_classes=10)))
    assert images.shape == (6, 1, 28, 28) and labels.shape == (6, 10)
    assert labels.dtype == torch.float32 and labels[0].nonzero().flatten().tolist() == [1, 4]
    assert labels[5].sum() == 1 and labels[5, digits[5].labels[0]] == 1
    mixed = digits[::15][:10]  # several classes
    loader = build_eval_loader(mixed, _grey28(), 4)
    assert len(loader) == 3 and [y.tolist() for _, y in loader] == \
        [[r.labels[0] for r in mixed[i:i + 4]] for i in (0, 4, 8)]
    assert len({r.labels[0] for r in mixed}) > 3


def test_augmentation_seeds_reproducible_and_per_rank(digits):
    """Same seed, rank and position: identical augmented views (two DALI threads);
    the pipeline seed differs per rank and per start position."""
    cfg = data_config("dali", 16, 1)
    cfg.workers = 2
    first = [next(iter(build_pretrain_loader(digits[:64], only(crop={}, blur={}, flip={},
                                                                 color_jitter={}), cfg, 16,
                                             seed=2)))[0] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    seeds = {pipeline_seed(2, rank, pos) for rank in range(4) for pos in (0, 1, 1000)}
    assert len(seeds) == 12 and all(0 <= s < 2 ** 31 for s in seeds)


def _unusual_images(folder: Path, source: Path) -> dict:
    """Grey JPEG, CMYK JPEG, RGBA PNG, grey+alpha PNG, palette GIF with transparency and a
    16-bit grey PNG, all made from one real image (colour from shifted copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = Image.open(source).convert("L").resize((40, 40), Image.BICUBIC)
    rgb = Image.merge("RGB", [grey, grey.transpose(Image.FLIP_LEFT_RIGHT),
                              grey.transpose(Image.FLIP_TOP_BOTTOM)])
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1)))
    rgba, la = rgb.copy(), grey.copy()
    rgba.putalpha(alpha)
    la.putalpha(alpha)
    files = {"grey.jpg": (grey, {"quality": 95}), "cmyk.jpg": (rgb.convert("CMYK"), {}),
             "rgba.png": (rgba, {}), "la.png": (la, {}),
             "palette.gif": (rgb.convert("P"), {"transparency": 0}),
             "deep.png": (Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), {})}
    for name, (img, options) in files.items():
        img.save(folder / name, **options)
    return {name: str(folder / name) for name in files}


def _bad_files(folder: Path, source: Path) -> list:
    """The torchvision tests' broken files plus a JPEG whose headers end before the scan
    (complete-looking: it passes the cheap screen and fails inside DALI)."""
    from test_data import make_bad_files
    bad = make_bad_files(folder, source)
    jpeg = Path(next(p for p in bad if p.endswith("cut.jpg"))).read_bytes()
    noscan = folder / "noscan.jpg"
    noscan.write_bytes(jpeg[:jpeg.index(b"\xff\xda")] + b"\xff\xd9")
    return bad + [str(noscan)]


def test_broken_files_are_skipped_named_and_counted(digits, tmp_path, caplog):
    """Truncated PNG/JPEG, zero-byte and text files, and a scan-less JPEG that DALI itself
    fails on: the run goes on with full batches, each file is named once in a warning and
    counted in ``skipped``; without filling, batches shrink instead."""
    good = [r for r in digits if r.labels == (3,)][:12]
    bad = _bad_files(tmp_path / "bad", Path(good[0].path))
    records = good + [ImageRecord(p, (3,)) for p in bad]
    loader = build_pretrain_loader(records, only(crop={}, flip={}), _grey28(), 4, seed=0)
    with caplog.at_level(logging.WARNING), loader:
        stream = iter(loader)
        sizes = [next(stream)[0].shape[0] for _ in range(2 * loader.steps_per_epoch)]
    assert sizes == [4] * 8 and loader.skipped.count == 5
    assert sorted(loader.skipped.paths) == sorted(bad)
    for path in bad:
        assert sum(path in r.getMessage() for r in caplog.records
                   if r.name == "hpt_hpc.data.dataset") == 1
    assert any("DALI failed on a batch" in r.getMessage() for r in caplog.records)
    lean = build_pretrain_loader(records, only(), _grey28(), 4, seed=0, fill_skipped=False)
    stream = iter(lean)
    sizes = [next(stream)[0].shape[0] for _ in range(lean.steps_per_epoch)]
    readable = sum(records[i].path not in bad for i in lean.sampler.epoch_indices(0))
    assert sum(sizes) == readable and min(sizes) < 4 and lean.skipped.count == 5
    evaluated = list(build_eval_loader(records, _grey28(), 5))
    assert sum(len(y) for _, y in evaluated) == 12 and all((y == 3).all() for _, y in evaluated)


@pytest.mark.parametrize("channels", [1, 3])
def test_unusual_images_decode_like_the_reference(digits, tmp_path, channels):
    """Grey, CMYK, alpha (composited on white), palette+transparency and 16-bit images give
    the torchvision backend's pixels (DALI alone would drop alpha and reject GIF)."""
    files = _unusual_images(tmp_path / "odd", Path(digits[0].path))
    records = [ImageRecord(p, (i,)) for i, p in enumerate(files.values())]
    out = {}
    for backend in ("torchvision", "dali"):
        cfg = data_config(backend, 40, channels)
        loader = build_eval_loader(records, cfg, 8)
        out[backend] = [(x.cpu(), y) for x, y in loader]
        assert loader.skipped.count == 0
    (xd, yd), (xt, yt) = out["dali"][0], out["torchvision"][0]
    assert torch.equal(yd, yt) and xd.shape == xt.shape == (6, channels, 40, 40)
    per_image = (xd - xt).abs().flatten(1).max(1).values * 0.25 * 255
    assert per_image.max() < 2.5, dict(zip(files, per_image.tolist()))


def test_data_check_clean_list_feeds_dali_without_skips(digits, tmp_path):
    """``data check`` names the broken files (the scan-less JPEG included), counts the
    images DALI must leave to PIL, and writes a clean file list, on which the DALI loader
    skips nothing."""
    tree = tmp_path / "tree" / "train" / "3"
    tree.mkdir(parents=True)
    for r in [r for r in digits if r.labels == (3,)][:10]:
        os.link(r.path, tree / Path(r.path).name)
    bad = _bad_files(tree, Path(digits[0].path))
    odd = _unusual_images(tree, Path(digits[0].path))
    report = check_dataset(tmp_path / "tree", splits=["train"], channels=1,
                           write_clean_list=str(tmp_path / "clean"))
    entry = report["splits"]["train"]
    assert sorted(u["path"] for u in entry["unreadable"]) == sorted(bad)
    assert sorted(entry["dali_converted"]) == sorted(p for n, p in odd.items() if n != "grey.jpg")
    assert "backend dali decodes 5 of them with PIL" in format_report(report)
    clean = DatasetConfig(path=str(tmp_path), format="filelist",
                          splits={"train": "clean-train.csv"})
    records, _ = list_split(clean, "train")
    loader = build_pretrain_loader(records, only(), _grey28(), 5, seed=0)
    stream = iter(loader)
    assert [next(stream)[0].shape[0] for _ in range(5)] == [5] * 5
    assert loader.skipped.count == 0 and loader.reader.converted > 0


def test_engine_trains_and_resumes_on_dali(tmp_path, mnist_tree):
    """The stage engine runs unchanged on the DALI backend; without augmentation the DALI
    stream is deterministic, so a stopped-and-resumed stage ends bit-identical."""
    data = {"backend": "dali", "device": DEVICE, "image_size": 16, "channels": 1,
            "mean": [0.5], "std": [0.5], "workers": 1}
    off = {k: {"enabled": False} for k in ("crop", "color_jitter", "grayscale", "blur",
                                            "flip")}
    from hpt_hpc.models import load_checkpoint
    from tiny import run_stage_of
    stages = {"target": {"dataset": "mnist", "variant": "scratch"}}
    results = []
    for name, stop in (("full", None), ("cut", 3)):
        cfg = tiny_config(tmp_path / name, {"mnist": mnist_tree}, stages, data=data,
                          augment=off)
        part = run_stage_of(cfg, "target", stop_after=stop)
        if stop:
            assert part.steps == 3 and not part.completed
            part = run_stage_of(cfg, "target")
            assert part.resumed_from == 3
        assert part.completed and part.skipped_images == 0
        results.append(load_checkpoint(part.checkpoint)["model"])
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key
